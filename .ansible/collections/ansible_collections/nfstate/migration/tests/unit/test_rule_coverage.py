"""bench/rule_coverage.py on the corpus of real-world rule shapes: no rule is lost."""

import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "unit", "fixtures", "rule_corpus")


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("rule_coverage", os.path.join(ROOT, "bench", "rule_coverage.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(coverage):
    return coverage.measure(CORPUS)


def test_no_rule_of_the_corpus_is_lost(figures):
    assert set(figures["totals"]) == {"iptables", "nftables"}
    for item in figures["files"]:
        assert item["lost"] == 0, (item["file"], item["lost_rules"])
        assert item["rules"] == item["carried"] + item["listed"] + item["followed"]
    for total in figures["totals"].values():
        assert total["lost"] == 0


def test_every_iptables_rule_of_the_corpus_is_counted(figures):
    # Counted here by text, apart from the script: every -A line of a nat table.
    for item in figures["files"]:
        if item["implementation"] == "iptables":
            with open(os.path.join(CORPUS, item["file"])) as handle:
                assert item["rules"] == len(re.findall(r"^-A ", handle.read(), re.M)), item["file"]


def test_every_file_has_its_header_and_listing(coverage):
    for name in os.listdir(CORPUS):
        if name.endswith(".iptables") or name.endswith(".nft"):
            with open(os.path.join(CORPUS, name)) as handle:
                writer, roles = coverage.header(handle.read())
            assert writer and set(roles) == {"inside", "outside"}, name
        if name.endswith(".nft"):
            assert os.path.exists(os.path.join(CORPUS, name[:-4] + ".json")), name


def test_what_the_corpus_shows(figures):
    files = dict((item["file"], item) for item in figures["files"])
    # libvirt, fw3 and fw4 are carried whole; kube-proxy's and Podman's hang on marks that rules of
    # the nat table set, and on load balancing.
    for name in ("libvirt.iptables", "libvirt.nft", "openwrt-fw3.iptables", "openwrt-fw4.nft"):
        assert files[name]["listed"] == 0, files[name]["all_reasons"]
    assert files["edge-howto.iptables"]["carried"] >= 20 and files["edge-howto.nft"]["carried"] >= 16
    assert files["firewalld.nft"]["listed"] == 2     # the jumps of its chain for the host's own traffic
    # Docker's published ports hang on "sent to an address of this host": carried.
    assert files["docker.iptables"]["carried"] >= 9
    # Every rule carried from iptables renders for nftables.
    iptables = figures["totals"]["iptables"]
    assert iptables["renders_on_other"] == iptables["model_rules"]


def test_the_report_prints_the_shares(coverage, figures):
    text = coverage.report(figures)
    assert re.search(r"^iptables: \d+ files", text, re.M) and re.search(r"^nftables: \d+ files", text, re.M)
    assert "lost 0 (0%)" in text
