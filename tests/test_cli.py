"""The offline command line (synth, cluster, encode) and the input-file readers behind it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.codes import from_uint8, to_hex
from core.hamming import paired_distances
from streams.cli import main
from streams.files import InputFileError, _parse_plain, parse_hex_lines, read_codes

HEX64 = "0123456789abcdef" * 4  # a valid 256-bit hash


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def last_json(result: Result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit 2, one-line message containing every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2000 x 256-bit codes around 20 planted centers, p = 0.1 (prefix of the synth outputs)."""
    prefix = tmp_path_factory.mktemp("synth") / "planted"
    result = run("synth", prefix, "--samples", 2000, "--clusters", 20, "--bits", 256, "--flip-prob", 0.1,
                 "--seed", 7, "--quiet")
    assert result.exit_code == 0, result.output
    return prefix


# -- group --------------------------------------------------------------------------------------


def test_help_documents_exit_codes_and_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for text in ("synth", "cluster", "encode", "Exit status", "0  success", "1  runtime failure", "2  usage"):
        assert text in result.output


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.startswith("photoclust, version ")


def test_unknown_option_is_a_usage_error() -> None:
    assert run("cluster", "--no-such-option").exit_code == 2


# -- synth --------------------------------------------------------------------------------------


def test_synth_writes_codes_truth_centers_and_csv(planted: Path) -> None:
    codes = np.load(f"{planted}.codes.npy")
    truth = np.load(f"{planted}.truth.npy")
    centers = np.load(f"{planted}.centers.npy")
    assert codes.dtype == np.uint8 and codes.shape == (2000, 32)
    assert truth.dtype == np.int64 and truth.shape == (2000,) and set(truth.tolist()) == set(range(20))
    assert centers.dtype == np.uint8 and centers.shape == (20, 32)
    lines = Path(f"{planted}.csv").read_text().splitlines()
    assert lines[0] == "id,hash" and len(lines) == 2001
    assert lines[1] == f"p000000000,{to_hex(from_uint8(codes[:1]))[0]}"
    assert lines[-1].startswith("p000001999,")


def test_synth_no_csv_and_json(tmp_path: Path) -> None:
    result = run("synth", tmp_path / "sub" / "s", "-n", 50, "-k", 5, "--bits", 64, "--seed", 1, "--no-csv", "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    assert summary["n_samples"] == 50 and summary["n_bits"] == 64 and "csv" not in summary["outputs"]
    assert np.load(tmp_path / "sub" / "s.codes.npy").shape == (50, 8)
    assert not (tmp_path / "sub" / "s.csv").exists()


def test_synth_same_seed_same_codes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert run("synth", tmp_path / name, "-n", 30, "-k", 3, "--seed", 5, "-q").exit_code == 0
    assert np.array_equal(np.load(tmp_path / "a.codes.npy"), np.load(tmp_path / "b.codes.npy"))


def test_synth_more_clusters_than_samples_is_a_usage_error(tmp_path: Path) -> None:
    assert_user_error(run("synth", tmp_path / "x", "-n", 5, "-k", 10), "--clusters")


# -- cluster ------------------------------------------------------------------------------------


def test_synth_cluster_round_trip(planted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run("cluster", f"{planted}.codes.npy", "-k", 20, "--init", "k-means++", "--seed", 1,
                 "--truth", f"{planted}.truth.npy", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    assert summary["n_samples"] == 2000 and summary["n_clusters"] == 20 and summary["n_bits"] == 256
    assert summary["purity"] >= 0.95 and summary["nmi"] > 0.9
    assert 1 <= summary["iterations"] <= 20

    labels = np.load(f"{out}.labels.npy")
    centers = np.load(f"{out}.centers.npy")
    assert labels.dtype == np.int64 and labels.shape == (2000,) and labels.min() >= 0 and labels.max() < 20
    assert centers.dtype == np.uint8 and centers.shape == (20, 32)

    with open(f"{out}.assignments.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "cluster", "distance"] and len(rows) == 2001
    assert rows[1][0] == "p000000000" and [int(r[1]) for r in rows[1:]] == labels.tolist()
    codes = from_uint8(np.load(f"{planted}.codes.npy"))
    expected = paired_distances(codes, from_uint8(centers)[labels])
    assert [int(r[2]) for r in rows[1:]] == expected.tolist()
    assert summary["inertia"] == int(expected.sum())
    assert summary["mean_distance"] == pytest.approx(expected.mean())

    with open(f"{out}.centers.csv", newline="") as f:
        center_rows = list(csv.reader(f))
    assert center_rows[0] == ["cluster", "hash", "size"] and len(center_rows) == 21
    assert [r[1] for r in center_rows[1:]] == to_hex(from_uint8(centers))
    assert sum(int(r[2]) for r in center_rows[1:]) == 2000
    assert summary["empty_clusters"] == sum(int(r[2]) == 0 for r in center_rows[1:])


def test_cluster_csv_input_gives_the_same_result_as_npy(planted: Path, tmp_path: Path) -> None:
    args = ["-k", 20, "--init", "k-means++", "--seed", 1, "--quiet"]
    assert run("cluster", f"{planted}.codes.npy", "-o", tmp_path / "npy", *args).exit_code == 0
    result = run("cluster", f"{planted}.csv", "-o", tmp_path / "csv", *args)
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(tmp_path / "npy.labels.npy"), np.load(tmp_path / "csv.labels.npy"))
    assert (tmp_path / "npy.assignments.csv").read_text() == (tmp_path / "csv.assignments.csv").read_text()


def test_cluster_uint64_npy_and_default_prefix(planted: Path, tmp_path: Path) -> None:
    path = tmp_path / "words.npy"
    np.save(path, from_uint8(np.load(f"{planted}.codes.npy")))
    result = run("cluster", path, "-k", 5, "--seed", 0, "--max-iter", 3, "--assign", "brute")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "words.labels.npy").shape == (2000,)
    assert (tmp_path / "words.assignments.csv").exists()


def test_cluster_shows_progress_and_summary_table(planted: Path, tmp_path: Path) -> None:
    result = run("cluster", f"{planted}.codes.npy", "-k", 20, "--seed", 3, "--init", "random", "-o", tmp_path / "p")
    assert result.exit_code == 0, result.output
    # Changed against the init's candidates: 20 of the 2,000 codes are the random seeds themselves.
    assert "iteration   1: changed 99.000%, inertia" in result.stderr
    for field in ("n samples", "iterations", "inertia", "mean distance", "empty clusters", "seconds"):
        assert field in result.stdout


def test_cluster_csv_with_header_comments_blank_lines_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        b"# photo hashes\r\nid,hash\r\n\r\na," + HEX64.encode() + b"\r\n  b , " + HEX64.upper().encode() + b"\n"
        b"# trailing comment\nc," + HEX64[::-1].encode() + b"\n"
    )
    result = run("cluster", path, "-k", 2, "--seed", 0, "--json")
    assert result.exit_code == 0, result.output
    assert last_json(result)["n_samples"] == 3
    ids = [line.split(",")[0] for line in (tmp_path / "mixed.assignments.csv").read_text().splitlines()[1:]]
    assert ids == ["a", "b", "c"]


@pytest.mark.parametrize(
    "content, line, field, problem",
    [
        (f"p1,{HEX64}\np2,{HEX64[:-1]}\n", 2, "hash", "hash has 63 hex digits, expected 64 for 256-bit codes"),
        (f"id,hash\n\np1,{HEX64}\n# c\np2,{HEX64[:-1]}g\n", 5, "hash", "non-hex character 'g' at position 63"),
        (f"p1,{HEX64}\np2\n", 2, "hash", "missing"),
        (f"p1,{HEX64}\np2,\n", 2, "hash", "hash is empty"),
        (f"p1,{HEX64}\n,{HEX64}\n", 2, "id", "id is empty"),
        (f"p1,{HEX64},extra\n", 1, "3", "unexpected extra field"),
        (f"p1,{HEX64[:62]}\n", 1, "hash", "hash has 62 hex digits"),
        (f"p1,{HEX64}\np2,{HEX64[:30]} {HEX64[31:]}\n", 2, "hash", "non-hex character ' '"),
    ],
    ids=["short", "non-hex", "missing-field", "empty-hash", "empty-id", "extra-field", "bad-width", "space"],
)
def test_bad_csv_names_file_line_and_field(tmp_path: Path, content: str, line: int, field: str, problem: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(content)
    result = run("cluster", path, "-k", 1)
    assert_user_error(result, f"data.csv line {line}, field {field}: ", problem)


def test_short_hash_message_is_exactly_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("".join(f"p{i},{HEX64}\n" for i in range(6)) + f"p6,{HEX64[:-1]}\n")
    result = run("cluster", path, "-k", 1)
    assert_user_error(result, "data.csv line 7, field hash: hash has 63 hex digits, expected 64 for 256-bit codes")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"# only a comment\nid,hash\n"], ids=["empty", "blank", "header"])
def test_empty_csv_is_a_user_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    assert_user_error(run("cluster", path, "-k", 1), "empty.csv: ", "expected one id,hash line per code")


def test_non_utf8_csv_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(f"p1,{HEX64}\n".encode() + b"p\xff,00\n")
    assert_user_error(run("cluster", path, "-k", 1), "bin.csv line 2", "not UTF-8")


def test_bits_option_must_match_the_file(planted: Path) -> None:
    assert_user_error(run("cluster", f"{planted}.csv", "-k", 2, "--bits", 128), "line 2, field hash", "expected 32")
    assert_user_error(run("cluster", f"{planted}.codes.npy", "-k", 2, "--bits", 128), "codes.npy", "256-bit")
    assert_user_error(run("cluster", f"{planted}.codes.npy", "-k", 2, "--bits", 100), "--bits")


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros((5, 32), dtype=np.float64), "got a float64 array of shape (5, 32)"),
        (np.zeros((5, 32), dtype=np.int64), "got a int64 array"),
        (np.zeros(32, dtype=np.uint8), "shape (32,)"),
        (np.zeros((5, 30), dtype=np.uint8), "240 bits"),
        (np.zeros((0, 32), dtype=np.uint8), "contains no codes"),
    ],
    ids=["float", "int64", "1-d", "width", "empty"],
)
def test_bad_npy_is_a_user_error(tmp_path: Path, array: np.ndarray, problem: str) -> None:
    path = tmp_path / "codes.npy"
    np.save(path, array)
    assert_user_error(run("cluster", path, "-k", 1), "codes.npy: ", problem)


def test_corrupt_npy_and_npz_are_user_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "full.npy", np.zeros((5, 32), dtype=np.uint8))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:100])
    assert_user_error(run("cluster", tmp_path / "cut.npy", "-k", 1), "cut.npy: ", "not a valid .npy file")
    np.savez(tmp_path / "arch.npz", codes=np.zeros((5, 32), dtype=np.uint8))
    assert_user_error(run("cluster", tmp_path / "arch.npz", "-k", 1), "arch.npz: ", "npz")


def test_missing_input_file(tmp_path: Path) -> None:
    assert_user_error(run("cluster", tmp_path / "nope.csv", "-k", 1), "nope.csv", "does not exist")


def test_more_clusters_than_codes(planted: Path) -> None:
    assert_user_error(run("cluster", f"{planted}.codes.npy", "-k", 2001), "-k", "only 2000 codes")


def test_truth_of_wrong_length_or_dtype(planted: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "short.npy", np.zeros(10, dtype=np.int64))
    assert_user_error(run("cluster", f"{planted}.codes.npy", "-k", 2, "--truth", tmp_path / "short.npy"),
                      "short.npy: ", "has 10 labels but the codes have 2000 rows")
    np.save(tmp_path / "float.npy", np.zeros(2000))
    assert_user_error(run("cluster", f"{planted}.codes.npy", "-k", 2, "--truth", tmp_path / "float.npy"),
                      "float.npy: ", "1-D integer array")


def test_unexpected_failure_exits_1_without_traceback(planted: Path, tmp_path: Path, monkeypatch) -> None:
    import core.bkmeans

    def broken_fit(self, codes):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(core.bkmeans.BKMeans, "fit", broken_fit)
    result = run("cluster", f"{planted}.codes.npy", "-k", 2, "-o", tmp_path / "x")
    assert result.exit_code == 1
    assert "unexpected RuntimeError: kaboom" in result.output and "Traceback" not in result.output
    result = run("--debug", "cluster", f"{planted}.codes.npy", "-k", 2, "-o", tmp_path / "x")
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_env_vars_feed_shared_options(planted: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["cluster", f"{planted}.codes.npy", "-k", "3", "-o", str(tmp_path / "e")],
        env={"PHOTOCLUST_SEED": "4", "PHOTOCLUST_JSON": "1", "PHOTOCLUST_QUIET": "1"},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and last_json(result)["n_clusters"] == 3


# -- encode -------------------------------------------------------------------------------------


def gaussian_blobs(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(k, dim))
    return (centers[rng.integers(k, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_encode_writes_codes_of_the_right_width(tmp_path: Path) -> None:
    features = tmp_path / "features.npy"
    np.save(features, gaussian_blobs(400, 80, 5, seed=0))
    result = run("encode", features, "--bits", 64, "--iters", 10, "--seed", 0, "-o", tmp_path / "codes.npy",
                 "--model", tmp_path / "itq.npz", "--json")
    assert result.exit_code == 0, result.output
    codes = np.load(tmp_path / "codes.npy")
    assert codes.dtype == np.uint8 and codes.shape == (400, 8)
    with np.load(tmp_path / "itq.npz") as model:
        assert model["mean"].shape == (80,) and model["components"].shape == (80, 64)
        assert model["rotation"].shape == (64, 64)
    summary = last_json(result)
    assert summary["n_bits"] == 64 and summary["n_samples"] == 400 and summary["n_features"] == 80

    # the codes cluster like the features: same blob -> much closer than different blobs
    result = run("cluster", tmp_path / "codes.npy", "-k", 5, "--init", "k-means++", "--seed", 0, "--quiet")
    assert result.exit_code == 0, result.output


def test_encode_default_output_and_256_bits(tmp_path: Path) -> None:
    features = tmp_path / "feat.npy"
    np.save(features, gaussian_blobs(300, 260, 3, seed=1).astype(np.float64))
    result = run("encode", features, "--iters", 2, "--seed", 0, "-q")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "feat.codes.npy").shape == (300, 32)


def test_encode_bad_features(tmp_path: Path) -> None:
    np.save(tmp_path / "narrow.npy", gaussian_blobs(300, 40, 3, seed=2))
    assert_user_error(run("encode", tmp_path / "narrow.npy", "--bits", 64), "narrow.npy: ", "40 feature columns")
    np.save(tmp_path / "few.npy", gaussian_blobs(30, 100, 3, seed=2))
    assert_user_error(run("encode", tmp_path / "few.npy", "--bits", 64), "few.npy: ", "30 rows")
    bad = gaussian_blobs(100, 70, 3, seed=2)
    bad[17, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert_user_error(run("encode", tmp_path / "nan.npy", "--bits", 64), "nan.npy: ", "row 17, column 3")
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    assert_user_error(run("encode", tmp_path / "text.npy"), "text.npy: ", "2-D float array")


# -- demo: the options it checks before it starts anything ----------------------------------------


class _StopBeforeTopics(Exception):
    pass


@pytest.fixture
def demo_settings(monkeypatch) -> list:
    """The settings ``demo`` would create its topics with; it stops there, before any broker is asked
    (an address that answers nothing, in case the stop were not reached)."""
    import streams.kafka_io

    seen: list = []

    def stop(settings, timeout: float = 30.0) -> None:
        seen.append(settings)
        raise _StopBeforeTopics

    monkeypatch.setattr(streams.kafka_io, "ensure_topics", stop)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    for name in ("PARTITIONS", "PROCESSING_GUARANTEE"):
        monkeypatch.delenv(f"PHOTOCLUST_{name}", raising=False)
    return seen


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_demo_refuses_a_bad_worker_count(value: str, demo_settings: list, tmp_path: Path) -> None:
    assert_user_error(run("demo", "--workers", value, "--workdir", tmp_path), "--workers")
    assert demo_settings == []


# partitions None: the default (6) already gives every worker one
@pytest.mark.parametrize("env, workers, partitions", [(None, 1, None), (None, 3, None), (None, 8, 8), ("8", 3, 8),
                                                      ("2", 4, 4)])
def test_demo_gives_the_input_topic_a_partition_per_worker(env, workers, partitions, demo_settings, monkeypatch,
                                                          tmp_path: Path) -> None:
    from streams.config import Settings

    if env is not None:
        monkeypatch.setenv("PHOTOCLUST_PARTITIONS", env)
    result = run("demo", "--workers", workers, "--workdir", tmp_path)
    assert result.exit_code == 1 and "_StopBeforeTopics" in result.output, result.output
    (settings,) = demo_settings
    assert settings.partitions == (partitions or Settings().partitions)
    assert settings.bootstrap_servers == "127.0.0.1:9"


# -- the two CSV parsers agree --------------------------------------------------------------------

ids_st = st.text(st.characters(blacklist_characters=",\n\r \t#", blacklist_categories=("Cs",)), min_size=1, max_size=6)
blank_st = st.sampled_from(["", " ", "\t", "\r"])


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, list[str], list[str]]:
    n_bits = draw(st.sampled_from([64, 128, 256]))
    n = draw(st.integers(1, 8))
    ids = draw(st.lists(ids_st, min_size=n, max_size=n))
    hexes = [draw(st.binary(min_size=n_bits // 8, max_size=n_bits // 8)).hex() for _ in range(n)]
    padded = draw(st.booleans())  # False: a "plain" file that the numpy fast path accepts
    pad = blank_st if padded else st.just("")
    lines = []
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["id,hash", "ID,Hash", "id,hex"])))
    for i, h in zip(ids, hexes):
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "# comment, with comma", "#"] + (["  "] if padded else []))))
        h = h.upper() if draw(st.booleans()) else h
        lines.append(f"{draw(pad)}{i}{draw(pad)},{draw(pad)}{h}{draw(pad)}")
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(lines) + (newline if draw(st.booleans()) else "")
    return text.encode(), ids, hexes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_files())
def test_fast_and_general_parsers_agree_on_valid_files(case: tuple[bytes, list[str], list[str]]) -> None:
    data, ids, hexes = case
    got_ids, codes, n_bits = parse_hex_lines(data.decode())
    assert got_ids == ids and to_hex(codes) == hexes and n_bits == len(hexes[0]) * 4
    fast = _parse_plain(data, None)
    if fast is not None:
        assert fast[0] == ids and to_hex(fast[1]) == hexes and fast[2] == n_bits


@settings(max_examples=150, deadline=None)
@given(csv_files(), st.data())
def test_corrupted_files_fail_with_the_general_parsers_error(tmp_path_factory, case, data) -> None:
    raw, _, _ = case
    position = data.draw(st.integers(0, len(raw) - 1))
    corrupted = raw[:position] + data.draw(st.sampled_from([b",", b"g", b"", b"\n,", b"0"])) + raw[position + 1 :]
    path = tmp_path_factory.mktemp("corrupt") / "c.csv"
    path.write_bytes(corrupted)
    try:
        text = corrupted.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(InputFileError, match="not UTF-8"):
            read_codes(path)
        return
    try:
        expected = parse_hex_lines(text, str(path))
    except InputFileError as e:
        with pytest.raises(InputFileError) as caught:
            read_codes(path)
        assert str(caught.value) == str(e)
    else:
        got = read_codes(path)
        assert got.ids == expected[0] and np.array_equal(got.codes, expected[1])


def _commands(group, prefix=()):
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the lazy ones too
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_no_command_has_an_option_twice():
    # Two options with one name make click keep only one value (and warn on --help): produce's
    # --seed (the planted photos') once shadowed the clustering seed of the settings options.
    commands = dict(_commands(main))
    assert {("produce",), ("worker",), ("cluster",)} <= set(commands)
    for path, command in commands.items():
        flags = [flag for param in command.params for flag in getattr(param, "opts", [])]
        names = [param.name for param in command.params]
        assert len(flags) == len(set(flags)), (path, sorted(f for f in flags if flags.count(f) > 1))
        assert len(names) == len(set(names)), (path, sorted(n for n in names if names.count(n) > 1))
