"""hack/apt-mirror.sh finds the Debian archive among apt's sources, as apt reads them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[2] / "hack" / "apt-mirror.sh"
MIRROR = "http://mirror.example.invalid/debian"


def run(tmp_path: Path, sources_list: str | None = None, parts: dict[str, str] | None = None,
        lists: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    sl, sp, ld = tmp_path / "sources.list", tmp_path / "sources.list.d", tmp_path / "lists"
    sp.mkdir()
    ld.mkdir()
    if sources_list is not None:
        sl.write_text(sources_list)
    for name, text in (parts or {}).items():
        (sp / name).write_text(text)
    for name, text in (lists or {}).items():
        (ld / name).write_text(text)
    env = {**os.environ, "APT_SOURCES_LIST": str(sl), "APT_SOURCES_DIR": str(sp), "APT_LISTS_DIR": str(ld),
           "APT_RELEASE": "bookworm"}
    return subprocess.run([str(HELPER)], env=env, capture_output=True, text=True, check=False)


def found(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_deb822_skips_security_and_vendor_stanzas(tmp_path: Path) -> None:
    sources = f"""\
# the security archive first: its suite is not a release
Types: deb
URIs: http://security.example.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://disabled.example.invalid/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb deb-src
URIs: {MIRROR}
 http://second.example.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
    vendor = """\
Types: deb
URIs: http://vendor.example.invalid/node
Suites: nodistro
Components: main
"""
    # a vendor repository in `<codename> main` form, read first (apt sorts by name); its Origin tells
    lookalike = """\
Types: deb
URIs: http://lookalike.example.invalid/debian/12/prod
Suites: bookworm
Components: main
"""
    result = run(tmp_path, parts={"debian.sources": sources, "aaa-vendor.sources": vendor,
                                  "aab-lookalike.sources": lookalike},
                 lists={"lookalike.example.invalid_debian_12_prod_dists_bookworm_InRelease": "Origin: vendor\n",
                        "mirror.example.invalid_debian_dists_bookworm_InRelease": "Origin: Debian\n"})
    assert found(result) == MIRROR


def test_one_line_entry_with_options(tmp_path: Path) -> None:
    sources_list = f"""\
# deb http://commented.example.invalid/debian bookworm main
deb-src {MIRROR} bookworm main
deb [arch=amd64] http://stable.example.invalid/docker bookworm stable
deb http://updates.example.invalid/debian bookworm-updates main
deb [ arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg ] {MIRROR} bookworm main # trailing
"""
    assert found(run(tmp_path, sources_list=sources_list)) == MIRROR


def test_sources_list_before_sources_list_d(tmp_path: Path) -> None:
    first = f"deb {MIRROR} stable main contrib\n"
    later = "Types: deb\nURIs: http://later.example.invalid/debian\nSuites: bookworm\nComponents: main\n"
    assert found(run(tmp_path, sources_list=first, parts={"debian.sources": later})) == MIRROR


def test_list_files_in_sources_list_d_count_in_name_order(tmp_path: Path) -> None:
    later = "Types: deb\nURIs: http://later.example.invalid/debian\nSuites: bookworm\nComponents: main\n"
    parts = {"a.list": f"deb {MIRROR} sid main\n", "debian.sources": later,
             "0.list.disabled": "deb http://disabled.example.invalid/debian sid main\n"}
    assert found(run(tmp_path, parts=parts)) == MIRROR


def test_commented_out_only(tmp_path: Path) -> None:
    result = run(tmp_path, sources_list=f"#deb {MIRROR} bookworm main\n",
                 parts={"debian.sources": f"#Types: deb\n#URIs: {MIRROR}\n#Suites: bookworm\n#Components: main\n"})
    assert result.returncode == 1


@pytest.mark.parametrize("sources_list", [None, "", "deb http://security.example.invalid/s bookworm-security main\n"])
def test_neither_has_one_names_both_places(tmp_path: Path, sources_list: str | None) -> None:
    result = run(tmp_path, sources_list=sources_list,
                 parts={"vendor.sources": "Types: deb\nURIs: http://vendor.example.invalid/x\nSuites: nodistro\n"
                                          "Components: main\n"})
    assert result.returncode == 1
    assert result.stdout == ""
    assert str(tmp_path / "sources.list") in result.stderr
    assert str(tmp_path / "sources.list.d") in result.stderr
    assert "MIRROR=" in result.stderr
