"""Every shipped weight file scores what its model card says, on the shared FER2013's PublicTest rows.

The card (weights/README.md, "## `NAME.npz`") states the accuracy as "**A%** (**B%** with
horizontal-flip averaging" and the macro-F1 as "macro-F1 F (G with `--tta`)"; this runs
scripts/evaluate.py's `evaluate` as a user would and compares to the card's rounding.
"""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = (ROOT / "weights" / "README.md").read_text()
FIGURES = re.compile(r"PublicTest \(never used for any choice\): \*\*accuracy ([\d.]+)%\*\* \(\*\*([\d.]+)%\*\* with "
                     r"horizontal-flip averaging,\s+`--tta`\), macro-F1 ([\d.]+) \(([\d.]+) with `--tta`\)")


def card_figures(name):
    """{tta: (accuracy %, macro-F1)} from NAME's card, as written."""
    section = CARDS.split(f"## `{name}.npz`", 1)[1].split("\n## ", 1)[0]
    match = FIGURES.search(section)
    assert match, f"weights/README.md: the card of {name}.npz states no PublicTest figures in the usual form"
    acc, acc_tta, f1, f1_tta = match.groups()
    return {False: (acc, f1), True: (acc_tta, f1_tta)}


def load_evaluate():
    """scripts/evaluate.py's evaluate_plain_and_flip: the figures of `evaluate.py` and `evaluate.py --tta`."""
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.evaluate_plain_and_flip


def shipped_names():
    return sorted(p.stem for p in (ROOT / "weights").glob("*.npz"))


@pytest.mark.slow
@pytest.mark.parametrize("name", shipped_names())
def test_shipped_weights_score_what_their_card_says(shared_file, name):
    data = shared_file("fer2013/fer2013.csv.gz")
    results = load_evaluate()(ROOT / "weights" / f"{name}.npz", data, split="PublicTest")
    for tta, result in results.items():
        accuracy, macro_f1 = card_figures(name)[tta]
        decimals = len(accuracy.split(".")[1]) if "." in accuracy else 0
        assert f"{100 * result['accuracy']:.{decimals}f}" == accuracy, f"{name}, tta={tta}"
        assert f"{result['macro_f1']:.{len(macro_f1.split('.')[1])}f}" == macro_f1, f"{name}, tta={tta}"
