"""README stays true to the code: its Python example runs and does what it says."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no Python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    acc = float(out.split()[-1])
    assert acc > 0.6, "ER on class-IL Split MNIST should be far above fine-tuning's 0.2"


def test_readme_config_files_exist():
    for path in re.findall(r"--config (\S+)", README.read_text()):
        assert (README.parent / path).is_file(), path


def test_tune_specs_named_in_docs_exist_and_parse():
    import yaml

    from lifelong.tuning import SearchSpace, parse_spec

    texts = README.read_text() + (README.parent / "docs" / "tuning.md").read_text()
    paths = set(re.findall(r"--spec (\S+)", texts))
    assert paths, "the docs name no tune spec"
    for path in paths:
        spec = parse_spec(yaml.safe_load((README.parent / path).read_text()))
        SearchSpace.parse(spec.space, spec.strategies)
