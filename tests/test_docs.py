"""Every ```python block of README.md and docs/*.md runs.

Rules (also stated in docs/index.md):

* The blocks of one page run in order, in one namespace, like a notebook, in a fresh temporary working
  directory; nothing needs the network.
* A block that names a trained folder gets a small stand-in: `STAND_INS` below builds untrained models of
  the same kind under those names (e.g. `lzn-digits-joint/pipeline` from the `digits-joint` preset) before the
  page runs. Outputs are not checked, only that the code runs as written.
* A block that cannot run offline (a Hub id, a released `.pt` file, a multi-hour training run) is preceded
  by `<!-- skip-test: the reason -->` (blank lines may separate the two). Each such block shows up as a
  skipped test with its page, line and reason.

Also checked: the mkdocs nav covers every page, and the zones figure exists, is referenced and its script runs.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
import yaml

import lzn_hf

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")
SKIP_MARKER = re.compile(r"^\s*<!--\s*skip-test:(?P<reason>.*?)-->\s*$")


@dataclass
class Block:
    page: str  # relative to the repository root
    number: int  # 1-based, among the page's python blocks
    line: int  # 1-based line of the block's first code line
    code: str
    skip: Optional[str]

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def extract_blocks(path: Path) -> List[Block]:
    return parse_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())


def parse_blocks(text: str, page: str) -> List[Block]:
    """The ```python (or ```py) blocks of a Markdown text, with their skip markers.

    Raises ValueError for a skip marker with no reason, or one not followed by a python block.
    """
    lines = text.splitlines()
    blocks, pending_skip, i = [], None, 0
    while i < len(lines):
        marker = SKIP_MARKER.match(lines[i])
        fence = FENCE.match(lines[i])
        if marker:
            if not marker.group("reason").strip():
                raise ValueError(f"{page}:{i + 1}: skip-test marker without a reason")
            pending_skip = (i + 1, marker.group("reason").strip())
        elif fence:
            indent, closing = fence.group("indent"), fence.group("fence")
            start, i = i + 1, i + 1
            while i < len(lines) and not lines[i].strip().startswith(closing):
                i += 1
            if fence.group("lang") in ("python", "py"):
                code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[start:i])
                blocks.append(Block(page, len(blocks) + 1, start + 1, code, pending_skip[1] if pending_skip else None))
            elif pending_skip:
                raise ValueError(f"{page}:{pending_skip[0]}: skip-test marker is followed by a {fence.group('lang') or 'plain'} block, not python")
            pending_skip = None
        elif lines[i].strip() and pending_skip:
            raise ValueError(f"{page}:{pending_skip[0]}: skip-test marker must come right before a ```python block")
        i += 1
    if pending_skip:
        raise ValueError(f"{page}:{pending_skip[0]}: skip-test marker at the end of the page")
    return blocks


ALL_BLOCKS = [block for path in PAGES for block in extract_blocks(path)]
RUNNABLE_PAGES = sorted({block.page for block in ALL_BLOCKS if block.skip is None})
SKIPPED_BLOCKS = [block for block in ALL_BLOCKS if block.skip is not None]


# ---------------------------------------------------------------------------------------------------------
# stand-ins for trained folders named by the docs
# ---------------------------------------------------------------------------------------------------------
def _digits_model():
    torch.manual_seed(0)
    return lzn_hf.LZNModel(lzn_hf.LZNConfig.from_preset("digits-joint")).eval()


def _save_model(folder: str) -> None:
    model = _digits_model()
    model.save_pretrained(folder)
    encoder = model.config.image_encoder_config
    lzn_hf.lzn_image_processor(encoder.image_size, encoder.num_channels).save_pretrained(folder)


def _save_pipeline(folder: str) -> None:
    from lzn_hf.pipeline_lzn import LZNPipeline

    model = _digits_model()
    LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors).save_pretrained(folder)


def _save_classifier(folder: str) -> None:
    model = _digits_model()
    classifier = lzn_hf.LZNForImageClassification(model.config).eval()
    classifier.load_state_dict(model.state_dict(), strict=False)  # the decoder's weights are not part of it
    classifier.build_anchor_bank(torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    classifier.save_pretrained(folder)
    lzn_hf.lzn_image_processor(8, 1).save_pretrained(folder)


#: folder name -> builder. Built in the page's working directory when the page's text names the folder,
#: unless the page saves that folder itself (then its own code must produce everything it later reads).
STAND_INS: Dict[str, Callable[[str], None]] = {
    "lzn-digits-joint/model": _save_model,
    "lzn-digits-joint/pipeline": _save_pipeline,
    "lzn-digits-joint/classifier": _save_classifier,
}


@pytest.fixture
def docs_workdir(tmp_path, monkeypatch):
    """A fresh working directory; class-level switches the snippets may flip are restored afterwards.

    One torch thread: the stand-in models are tiny, and on a busy 2-core machine several threads per op
    make them ~100x slower.
    """
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name in dir(lzn_hf):
        value = getattr(lzn_hf, name)
        if isinstance(value, type) and hasattr(value, "_auto_class"):
            monkeypatch.setattr(value, "_auto_class", value._auto_class)  # `register_for_auto_class` in hub.md
    yield tmp_path
    torch.set_num_threads(threads)


def run_page(page: str) -> int:
    """Run the runnable blocks of `page` in order; return how many ran. Tracebacks point at the page's lines."""
    text = (ROOT / page).read_text(encoding="utf-8")
    for folder, build in STAND_INS.items():
        if folder in text and f'save_pretrained("{folder}")' not in text and not Path(folder).exists():
            build(folder)
    namespace = {"__name__": "__docs__"}
    ran = 0
    for block in (block for block in ALL_BLOCKS if block.page == page and block.skip is None):
        torch.manual_seed(0)
        code = compile("\n" * (block.line - 1) + block.code, str(ROOT / page), "exec")  # line numbers = the page's
        try:
            exec(code, namespace)
        except Exception as error:
            raise AssertionError(f"python block {block.number} of {block.where} failed: {type(error).__name__}: {error}") from error
        ran += 1
    return ran


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_doc_snippets_run(page, docs_workdir):
    assert run_page(page) > 0


@pytest.mark.parametrize("block", SKIPPED_BLOCKS, ids=[block.where for block in SKIPPED_BLOCKS])
def test_marked_snippets_are_reported(block):
    pytest.skip(f"{block.where} (python block {block.number}): {block.skip}")


def test_snippet_inventory(capsys):
    """Markers are well formed (checked while parsing), and the README and the method page have runnable code."""
    runnable = [block for block in ALL_BLOCKS if block.skip is None]
    assert {"README.md", "docs/method.md", "docs/index.md"} <= {block.page for block in runnable}
    with capsys.disabled():
        print(f"\n[docs] {len(ALL_BLOCKS)} python blocks in {len(PAGES)} pages: {len(runnable)} run, {len(SKIPPED_BLOCKS)} skipped "
              f"({', '.join(block.where for block in SKIPPED_BLOCKS) or 'none'})")


def test_skip_markers_are_parsed():
    cases = {
        "<!-- skip-test: needs the Hub -->\n\n```python\nx = 1\n```\n": "needs the Hub",
        "<!-- skip-test: x -->\ntext\n```python\nx = 1\n```\n": ValueError,
        "<!-- skip-test: -->\n```python\nx = 1\n```\n": ValueError,
        "<!-- skip-test: wrong block -->\n```bash\nls\n```\n": ValueError,
        "```python\nx = 1\n```\n": None,
    }
    for text, expected in cases.items():
        if expected is ValueError:
            with pytest.raises(ValueError):
                parse_blocks(text, "page.md")
        else:
            (block,) = parse_blocks(text, "page.md")
            assert block.skip == expected and block.code == "x = 1" and block.line == text.splitlines().index("x = 1") + 1


# ---------------------------------------------------------------------------------------------------------
# the site and the figure
# ---------------------------------------------------------------------------------------------------------
def nav_pages(nav) -> List[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_mkdocs_nav_covers_every_page():
    """Every docs page is in the nav. A nav entry whose page is not written yet is a warning, as in mkdocs."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    assert listed[0] == "index.md" and len(listed) == len(set(listed))
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert not pages - set(listed), f"docs pages missing from mkdocs.yml's nav: {sorted(pages - set(listed))}"
    missing = sorted(set(listed) - pages)
    if missing:
        warnings.warn(f"mkdocs.yml's nav names pages not written yet: {missing}")


def test_zones_figure_exists_and_is_shown():
    assert (ROOT / "docs" / "images" / "zones.png").stat().st_size > 10_000
    for page in ("docs/index.md", "docs/method.md"):
        assert "images/zones.png" in (ROOT / page).read_text(), page


def test_zones_figure_script_runs(docs_workdir, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("make_zones_figure", ROOT / "docs" / "make_zones_figure.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "GRID", 48)  # a coarse, fast version of the same figure
    monkeypatch.setattr(script, "REVERSE_STEPS", 40)
    monkeypatch.setattr(script, "FORWARD_STEPS", 10)
    script.draw(tmp_path / "zones.png")
    assert (tmp_path / "zones.png").stat().st_size > 10_000
