# Copyright (c) CaGNet-D2 contributors.
"""The user-facing pages stay navigable: every relative link (and its #anchor) resolves, every
config file a page names exists, and the README leads in one link or heading to what a newcomer
looks for first (train on VOC with 8 GPUs, evaluate a checkpoint, add a dataset, add a method,
why CaGNet trails ZS3Net here)."""
import glob
import os
import re

import pytest

from conftest import REPO

PAGES = sorted(
    [os.path.join(REPO, p) for p in ("README.md", "CHANGELOG.md", "projects/CaGNet/README.md",
                                     "projects/CaGNet/AUDIT.md", "configs/README.md", "tools/README.md",
                                     "dev/README.md", "datasets/README.md")]
    + glob.glob(os.path.join(REPO, "docs", "*.md")) + glob.glob(os.path.join(REPO, "docs", "experiments", "*.md"))
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.M)
# Our config folders (AUDIT.md also names the authors' configs/voc12.yaml, ...).
CONFIG = re.compile(r"configs/(?:synthetic_scenes|pascal_voc|pascal_context|coco_stuff)/[\w.-]+?\.yaml|configs/Base-\w+\.yaml")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: str):
    with open(path) as f:
        return {_slug(h) for h in HEADING.findall(f.read())}


def _links(path: str):
    with open(path) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)  # code blocks hold commands, not links
    return LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file_part, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        if not os.path.exists(path):
            broken.append(f"{target}: no {os.path.relpath(path, REPO)}")
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(path, REPO)}")
    assert not broken, broken


@pytest.mark.parametrize("page", [p for p in PAGES if "/experiments/" not in p], ids=lambda p: os.path.relpath(p, REPO))
def test_config_files_named_on_a_page_exist(page):
    """Current pages only: the lab notebook quotes the names configs had when they ran."""
    with open(page) as f:
        names = set(CONFIG.findall(f.read()))
    missing = [n for n in names if "..." not in n and not os.path.isfile(os.path.join(REPO, n))]
    assert not missing, missing


def test_readme_leads_to_what_a_newcomer_looks_for():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    headings = [h.lower() for h in HEADING.findall(readme)]
    assert any("pascal-voc with 8 gpus" in h for h in headings)
    assert "--eval-only MODEL.WEIGHTS" in readme  # evaluating a checkpoint, in the README itself
    assert any("why cagnet trails zs3net" in h for h in headings)
    extending = os.path.join(REPO, "docs", "EXTENDING.md")
    assert "(docs/EXTENDING.md)" in readme
    assert {"adding-a-dataset", "adding-a-method"} <= _anchors(extending)
    assert len(readme.splitlines()) <= 200
