"""The README's variants table is the code's output, not typed-in numbers."""
import pathlib

from ascan.complexity import count_macs, count_params, variants_table

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_variants_table_matches_code():
    text = README.read_text()
    start = text.index("<!-- variants-table:start -->\n") + len("<!-- variants-table:start -->\n")
    end = text.index("<!-- variants-table:end -->")
    assert text[start:end].strip() == variants_table().strip(), "run `python -m ascan.complexity` and update README.md"


def test_mac_counter_counts_a_known_layer():
    import torch

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 4 * 4, 10))
    assert count_params(m) == 3 * 8 * 9 + 128 * 10 + 10
    assert count_macs(m, (1, 3, 4, 4)) == 16 * 8 * 27 + 128 * 10


def test_readme_usage_snippet_runs(capsys):
    text = README.read_text()
    start = text.index("```python\n", text.index("## Use")) + len("```python\n")
    code = text[start:text.index("```", start)]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["logits"].shape == (2, 1000)
    printed = capsys.readouterr().out
    assert "'eager': 'ok'" in printed and "conv_bn_gelu" in printed and "impls skipped [reason]" in printed


def test_readme_generation_snippet_runs():
    """The UNet snippet, with 2 sampling steps instead of 50 to stay quick."""
    text = README.read_text()
    start = text.index("```python\n", text.index("## Generation models")) + len("```python\n")
    code = text[start:text.index("```", start)].replace("steps=50", "steps=2")
    assert "steps=2" in code
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["eps"].shape == (2, 4, 32, 32)
    assert scope["lat"].shape == (2, 4, 32, 32) and bool(scope["lat"].isfinite().all())


def test_readme_segmentation_snippet_runs():
    """The segmentation snippet at 64x64 instead of 512x512."""
    text = README.read_text()
    start = text.index("```python\n", text.index("## Segmentation")) + len("```python\n")
    code = text[start:text.index("```", start)]
    assert code.count("randn(1, 3, 512, 512)") == 2
    scope: dict = {}
    exec(compile(code.replace("randn(1, 3, 512, 512)", "randn(1, 3, 64, 64)"), "README.md", "exec"), scope)
    assert scope["logits"].shape == (1, 150, 64, 64)
    assert [tuple(f.shape) for f in scope["feats"]] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]


def test_readme_op_table_matches_registry():
    from ascan_kernels.info import op_table

    text = README.read_text()
    start = text.index("<!-- ops-table:start -->\n") + len("<!-- ops-table:start -->\n")
    end = text.index("<!-- ops-table:end -->")
    assert text[start:end].strip() == op_table().strip(), \
        "run `python -m ascan_kernels --op-table` and put its output between the ops-table markers in README.md"
