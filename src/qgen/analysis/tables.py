"""One table, three formats: Markdown (the committed report), LaTeX (booktabs, for the paper) and CSV (the
numbers behind the cells, one column per quantity, for anyone re-plotting).

A displayed cell is a `Cell`: a value, optionally ± std over seeds, a relative change and the number of items
behind it ([n=…]), and marks — `id` (an in-distribution cell: bold), `sig` (a difference the paired bootstrap finds
significant: *) and `eq` (no difference: the CI rules out every difference as large as the comparison's minimum
detectable difference: ≈).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

LEGEND = ("Cells: mean ± std over seeds (std omitted for one seed), [n=…]: evaluation items behind the cell (windows "
          "for KL, tokens for perplexity). **Bold**: in-distribution calibration (calibration set = test set). *: the "
          "paired bootstrap over evaluation items (95% CI) excludes 0. ≈: no difference — the CI excludes every "
          "difference as large as the comparison's minimum detectable difference (MDE, 80% power, two-sided α = "
          "0.05); a difference with neither mark is too small a sample to tell. KL, flips and perplexity: lower is "
          "better.")


def verdict_marks(verdict: str | None) -> frozenset:
    """The cell marks of a comparison's verdict (qgen.analysis.stats): * different, ≈ no difference."""
    from qgen.analysis.stats import DIFFERENT, NO_DIFFERENCE

    return frozenset({"sig"} if verdict == DIFFERENT else {"eq"} if verdict == NO_DIFFERENCE else ())


def digits_for(metric: str) -> int:
    """Decimals a metric is shown with: 4 for KL, flip and agreement rates (small numbers), else 3."""
    return 4 if str(metric).startswith(("kl_", "flip_", "top1_")) else 3


def ci_text(low: float, high: float) -> str:
    return "–" if low is None or math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"


def mde_text(mde: float) -> str:
    return "–" if mde is None or math.isnan(mde) else f"{mde:.4f}"


@dataclass(frozen=True)
class Cell:
    value: float
    std: float | None = None
    rel: float | None = None  # relative change in percent
    marks: frozenset = frozenset()
    digits: int = 3
    signed: bool = False
    n: float | None = None  # items behind the value


    def text(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "–"
        sign = "+" if self.signed else ""
        big = abs(self.value) >= 1e5  # e.g. the perplexity of a broken 2-bit model: scientific notation
        out = f"{self.value:{sign}.{self.digits}{'e' if big else 'f'}}"
        if self.std is not None and not math.isnan(self.std):
            out += f" ± {self.std:.{self.digits}{'e' if big else 'f'}}"
        if self.rel is not None and not math.isnan(self.rel):
            out += f" ({self.rel:+.3g}%)" if abs(self.rel) >= 1e4 else f" ({self.rel:+.1f}%)"
        if self.n is not None and not (isinstance(self.n, float) and math.isnan(self.n)):
            out += f" [n={self.n:g}]"
        return out


def _md(cell) -> str:
    if not isinstance(cell, Cell):
        return "" if cell is None or (isinstance(cell, float) and math.isnan(cell)) else str(cell)
    out = cell.text()
    if "id" in cell.marks:
        out = f"**{out}**"
    if "sig" in cell.marks:
        out += "\\*"
    if "eq" in cell.marks:
        out += " ≈"
    return out


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex(cell) -> str:
    if not isinstance(cell, Cell):
        return latex_escape(_md(cell))
    out = latex_escape(cell.text()).replace("±", r"$\pm$").replace("–", "--")
    if "id" in cell.marks:
        out = rf"\textbf{{{out}}}"
    if "sig" in cell.marks:
        out += r"$^{*}$"
    if "eq" in cell.marks:
        out += r" $\approx$"
    return out


@dataclass
class Table:
    name: str  # file stem
    title: str
    display: pd.DataFrame  # cells shown (Cell or plain values); the index is not written
    data: pd.DataFrame  # the numbers behind it, written to CSV
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        cols = [str(c) for c in self.display.columns]
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for _, row in self.display.iterrows():
            lines.append("| " + " | ".join(_md(v).replace("|", "\\|") for v in row) + " |")
        notes = "".join(f"\n{n}\n" for n in self.notes)
        return f"**{self.title}**\n\n" + "\n".join(lines) + "\n" + notes

    def latex(self) -> str:
        cols = list(self.display.columns)
        body = [" & ".join(_tex(v) for v in row) + r" \\" for _, row in self.display.iterrows()]
        notes = " ".join(latex_escape(n) for n in self.notes)
        return "\n".join([
            r"\begin{table}[t]", r"\centering", r"\small",
            r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
            " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule", *body, r"\bottomrule",
            r"\end{tabular}",
            rf"\caption{{{latex_escape(self.title)}. {notes}}}",
            rf"\label{{tab:{self.name}}}", r"\end{table}", ""])

    def write(self, out_dir: Path) -> dict[str, Path]:
        out_dir = Path(out_dir)
        paths = {"md": out_dir / "tables" / f"{self.name}.md", "tex": out_dir / "tables" / f"{self.name}.tex",
                 "csv": out_dir / "csv" / f"{self.name}.csv"}
        for p in paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        paths["md"].write_text(self.markdown())
        paths["tex"].write_text(self.latex())
        self.data.to_csv(paths["csv"], index=False)
        return paths
