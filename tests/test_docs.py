"""Every fenced code block in README.md and docs/*.md runs here, as a reader would run it.

Rules (README.md, "Tests", says the same):
- Blocks are found in README.md and every docs/*.md (a new page is picked up by itself). A block is
  skipped only when the line directly above its opening fence is `<!-- docs-test: skip REASON -->`; the
  test reports REASON. Skipped `python` blocks are still compiled, skipped shell blocks parsed (`bash -n`).
- `bash`/`sh`/`shell` blocks run with `bash -euo pipefail` (a non-zero exit or a Traceback fails them);
  `console` blocks run their `$ ` lines; `python` blocks are exec'd in this process. `text` blocks are
  output samples and diagrams, never run. `json`, `toml`, `yaml` and `ini` blocks are parsed. Any other
  language, or a fence without one, fails until it is marked or taught here.
- Placeholders, as whole words: RUN = a copy of a trained bundle (tiny preset, 64 px, 1 epoch; not
  exported), DATA = a generated data set (MVTec layout, 10 training images of 64 px), IMAGES = a folder of
  4 of its test images, OUT = an empty output folder. Each block gets its own working folder (holding
  links to the repository's top-level folders, so `python examples/...` works) and its own copy of RUN.
- Shrinking: `aminet-edge train` runs with `--preset tiny --image-size 64 --epochs 1` appended (click
  keeps an option's last value), `aminet-edge demo` with `--epochs 1`; in python blocks every
  `PRESETS[...]` is that tiny 64 px model and `epochs=N` becomes `epochs=1`.
- `pip` is never run (the suite must not change its environment): a `pip install` line is checked
  instead: every extra it names exists in setup.py, and aminet-edge itself comes from a clone or a wheel
  folder (`-e .`, `--find-links`), since it is not on PyPI.
- Benchmarks append to a temporary folder (AMINET_BENCH_RESULTS), never to the source tree.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = re.compile(r"^\s*<!--\s*docs-test:\s*skip\b\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)")
PLACEHOLDER = re.compile(r"(?<![\w$/.-])(RUN|DATA|IMAGES|OUT)(?![\w-])")
SHELL = {"bash", "sh", "shell", "console"}


def _toml(text: str) -> object:
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib: toml blocks cannot be parsed")
    return tomllib.loads(text)


def _yaml(text: str) -> object:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: yaml blocks cannot be parsed")
    return yaml.safe_load(text)


def _ini(text: str) -> object:
    import configparser

    parser = configparser.ConfigParser()
    parser.read_string(text)
    return parser


# languages checked by parsing them
PARSERS: dict[str, Callable[[str], object]] = {"json": json.loads, "toml": _toml, "yaml": _yaml, "ini": _ini}
RUN_LANGS = SHELL | {"python"} | set(PARSERS)
TRAIN_SHRINK = ["--preset", "tiny", "--image-size", "64", "--epochs", "1"]
TIMEOUT = 240


@dataclasses.dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the skip mark's reason; None: runs

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_blocks(page: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of `page`, and the problems of its skip marks (a mark without a reason, or not
    directly above a fence)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    marks: list[int] = []  # 1-based lines of the marks outside blocks
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            if SKIP_MARK.match(lines[i]):
                marks.append(i + 1)
            i += 1
            continue
        indent, fence, lang = opening.groups()
        above = SKIP_MARK.match(lines[i - 1]) if i else None
        if above is not None and not above.group(1):
            problems.append(f"{page.name}:{i}: a docs-test skip mark needs a reason")
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        blocks.append(Block(page, start, lang.lower(), "\n".join(body) + "\n",
                            above.group(1) if above is not None else None))
        i += 1
    fences = {b.line - 1 for b in blocks}  # 1-based lines of marks = 0-based indices of the fences below
    problems += [f"{page.name}:{n}: a docs-test mark must sit on the line directly above a fence"
                 for n in marks if n not in fences]
    return blocks, problems


BLOCKS = [b for page in PAGES for b in parse_blocks(page)[0]]


def setup_extras() -> set[str]:
    """The keys of setup.py's extras_require, read without running setup.py."""
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "extras_require" and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    raise AssertionError("setup.py has no extras_require")


def check_pip(args: list[str]) -> str | None:
    """What is wrong with the command line `pip ARGS` as documentation, or None."""
    if not args or args[0] not in ("install", "wheel"):
        return None
    extras, local = setup_extras(), "-e" in args or "--editable" in args or "--find-links" in args or "-f" in args
    for arg in args[1:]:
        m = re.fullmatch(r"(aminet[-_]edge|\.|\S+\.whl)(?:\[([^\]]*)\])?", arg)
        if m is None:
            continue
        unknown = {e.strip() for e in (m.group(2) or "").split(",") if e.strip()} - extras
        if unknown:
            return f"pip {' '.join(args)}: no extra {sorted(unknown)} in setup.py (it has {sorted(extras)})"
        if m.group(1) in ("aminet-edge", "aminet_edge") and not local:
            return (f"pip {' '.join(args)}: aminet-edge is not on PyPI; install it from a clone (pip install -e .) "
                    "or from a folder of built wheels (pip install --find-links DIR 'aminet-edge[...]')")
    return None


# ---- the environment the blocks run in ------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """DATA and a trained RUN (made as the shrunk `aminet-edge train DATA --out RUN` makes it)."""
    pytest.importorskip("torch", reason="the documented training needs torch (pip install -e '.[train]')")
    from click.testing import CliRunner

    from aminet_edge.cli import main
    from aminet_edge.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("docs")
    data = make_synthetic_dataset(root / "DATA", n_train=10, n_test_good=2, n_test_defect=1, size=64)
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(root / "RUN"), "--quiet", *TRAIN_SHRINK])
    assert res.exit_code == 0, res.output
    return {"DATA": data, "RUN": root / "RUN"}


def workspace(shared: dict[str, Path], tmp: Path) -> dict[str, Path]:
    """A block's working folder `tmp`: its placeholders' paths, links to the repository, and .bin/ with the
    `python`, `aminet-edge` and `pip` the shell blocks find first on PATH."""
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in ("runs", "dist", "build"):
            (tmp / entry.name).symlink_to(entry)
    shutil.copytree(shared["RUN"], tmp / "RUN")
    (tmp / "IMAGES").mkdir()
    (tmp / "OUT").mkdir()
    for image in sorted((shared["DATA"] / "test").rglob("*.png"))[:4]:
        shutil.copy(image, tmp / "IMAGES" / f"{image.parent.name}_{image.name}")
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    py = sys.executable
    wrappers = {
        "python": f'if [ "${{1:-}}" = -m ] && [ "${{2:-}}" = pip ]; then shift 2; exec pip "$@"; fi\nexec {py} "$@"',
        "aminet-edge": ('extra=()\ncase "${1:-}" in\n'
                        f'  train) extra=({" ".join(TRAIN_SHRINK)}) ;;\n  demo) extra=(--epochs 1) ;;\nesac\n'
                        f'exec {py} -m aminet_edge "$@" "${{extra[@]}}"'),
        # pip records its command line (fields ended by \x1f, one call a line) for check_pip, installs nothing
        "pip": f"printf '%s\\037' \"$@\" >> {tmp / '.pip_calls'}\necho >> {tmp / '.pip_calls'}",
    }
    for name, body in wrappers.items():
        path = bin_dir / name
        path.write_text(f"#!/usr/bin/env bash\nset -euo pipefail\n{body}\n")
        path.chmod(0o755)
    (bin_dir / "python3").symlink_to(bin_dir / "python")
    return {"DATA": shared["DATA"], "RUN": tmp / "RUN", "IMAGES": tmp / "IMAGES", "OUT": tmp / "OUT",
            "bin": bin_dir, "bench": tmp / ".bench_results", "pip_calls": tmp / ".pip_calls"}


def fill(code: str, paths: dict[str, Path]) -> str:
    return PLACEHOLDER.sub(lambda m: str(paths[m.group(1)]), code)


def shell_script(block: Block) -> str:
    if block.lang != "console":
        return block.code
    return "\n".join(line[2:] for line in block.code.splitlines() if line.startswith("$ ")) + "\n"


def run_shell(block: Block, paths: dict[str, Path], cwd: Path) -> None:
    env = dict(os.environ, PATH=f"{paths['bin']}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               AMINET_BENCH_RESULTS=str(paths["bench"]))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", fill(shell_script(block), paths)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    calls = paths["pip_calls"].read_text().splitlines() if paths["pip_calls"].exists() else []
    problems = [p for p in (check_pip(call.split("\x1f")[:-1]) for call in calls) if p]
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and not problems, (
        f"{block.id} failed (exit {proc.returncode}):\n{block.code}\n--- pip\n{problems}\n"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


def run_python(block: Block, paths: dict[str, Path], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aminet_edge.config import PRESETS

    tiny = dataclasses.replace(PRESETS["tiny"], image_size=64)
    for name in list(PRESETS):
        monkeypatch.setitem(PRESETS, name, tiny)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("AMINET_BENCH_RESULTS", str(paths["bench"]))
    code = re.sub(r"\bepochs=\d+", "epochs=1", fill(block.code, paths))
    exec(compile(code, block.id, "exec"), {"__name__": "__main__"})  # noqa: S102 - the documented code


# ---- the tests ------------------------------------------------------------------------------------
def test_every_page_is_read_and_every_mark_sits_on_a_fence() -> None:
    assert ROOT / "README.md" in PAGES and ROOT / "docs" / "deployment.md" in PAGES
    problems = [p for page in PAGES for p in parse_blocks(page)[1]]
    assert not problems, "\n".join(problems)
    assert sum(b.skip is None and b.lang in RUN_LANGS for b in BLOCKS) >= 3  # the harness runs real blocks


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang != "text"], ids=lambda b: f"{b.id}-{b.lang or 'none'}")
def test_block(block: Block, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.skip is not None:
        if block.lang == "python":
            compile(block.code, block.id, "exec")
        elif block.lang in SHELL:
            proc = subprocess.run(["bash", "-n"], input=shell_script(block), capture_output=True, text=True)
            assert proc.returncode == 0, f"{block.id}: {proc.stderr}"
        pytest.skip(f"{block.id}: {block.skip}")
    assert block.lang, f"{block.id}: a fence needs a language (text for output samples and diagrams)"
    assert block.lang in RUN_LANGS, (f"{block.id}: ```{block.lang} blocks are not run: mark it "
                                     "<!-- docs-test: skip REASON --> or teach tests/test_docs.py to run it")
    if block.lang in PARSERS:
        PARSERS[block.lang](block.code)
        return
    paths = workspace(request.getfixturevalue("shared"), tmp_path)
    if block.lang == "python":
        run_python(block, paths, tmp_path, monkeypatch)
    else:
        run_shell(block, paths, tmp_path)


def test_readme_lists_every_extra_of_setup_py() -> None:
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("\nExtras: "):].split("\n\n")[0]
    listed = re.findall(r"`\[([\w-]+)\]`", paragraph)
    assert listed and sorted(set(listed)) == sorted(setup_extras()), paragraph


def test_embed_example_without_torch_asks_for_the_graphs(shared: dict[str, Path]) -> None:
    """examples/embed.py promises not to import torch: on a bundle without graphs it says, in one line, to
    export them (the RUN of these tests is not exported)."""
    code = (f"import runpy, sys\nsys.modules['torch'] = None\n"
            f"sys.argv = [{str(ROOT / 'examples' / 'embed.py')!r}, {str(shared['RUN'])!r}, {str(shared['DATA'])!r}]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"cannot load {shared['RUN']}: no backend can run")
    assert f"export it with `aminet-edge export {shared['RUN']}`" in proc.stderr


# ---- the harness's own rules ----------------------------------------------------------------------
def test_parse_blocks_reads_marks_languages_and_lines(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("intro\n\n<!-- docs-test: skip needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
                    "  ```python\n  x = 1\n  ```\n```\nno language\n```\n<!-- docs-test: skip -->\n```text\n"
                    "out\n<!-- docs-test: skip inside -->\n```\n<!-- docs-test: skip stray -->\n\ntext\n")
    blocks, problems = parse_blocks(page)
    assert [(b.line, b.lang, b.code, b.skip) for b in blocks] == [
        (4, "bash", "nvidia-smi\n", "needs a GPU"), (8, "python", "x = 1\n", None), (11, "", "no language\n", None),
        (15, "text", "out\n<!-- docs-test: skip inside -->\n", "")]  # a mark inside a block is text
    assert problems == ["page.md:14: a docs-test skip mark needs a reason",
                        "page.md:19: a docs-test mark must sit on the line directly above a fence"]


def test_placeholders_are_whole_words() -> None:
    paths = {k: Path(f"/t/{k.lower()}") for k in ("RUN", "DATA", "IMAGES", "OUT")}
    assert fill("aminet-edge predict RUN IMAGES --out OUT # RUN/engines", paths) == (
        "aminet-edge predict /t/run /t/images --out /t/out # /t/run/engines")
    assert fill('x = "RUN"; $OUT /opt/RUN RUNS OUTPUT DATA_DIR --run', paths) == (
        'x = "/t/run"; $OUT /opt/RUN RUNS OUTPUT DATA_DIR --run')


def test_a_failing_block_fails_with_its_place_and_output(shared: dict[str, Path], tmp_path: Path) -> None:
    paths = workspace(shared, tmp_path)
    for code, said in [("aminet-edge info RUN\nls OUT/absent\n", "No such file or directory"),
                       ("pip install --find-links dist 'aminet-edge[nope]'\n", "no extra ['nope']"),
                       ("python -c 'import aminet_edge; raise SystemExit(aminet_edge.missing)'\n", "Traceback")]:
        block = Block(ROOT / "README.md", 1, "bash", code, None)
        with pytest.raises(AssertionError, match="README.md:1 failed") as failure:
            run_shell(block, paths, tmp_path)
        assert said in str(failure.value)


def test_pip_lines_are_checked_against_setup_py() -> None:
    assert check_pip(["install", "-e", ".[train,weights,onnxruntime]"]) is None
    assert check_pip(["install", "--find-links", "dist", "aminet-edge[openvino,onnxruntime]"]) is None
    assert check_pip(["install", "opencv-python-headless"]) is None
    assert "not on PyPI" in (check_pip(["install", "aminet-edge[rtx]"]) or "")
    assert "no extra ['cuda']" in (check_pip(["install", "-e", ".[cuda]"]) or "")

