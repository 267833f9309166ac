"""Genotype validation, serialisation and the zoo."""
from __future__ import annotations

import pytest

from relnas import Genotype, GenotypeError, get_genotype, list_genotypes, register_genotype
from relnas.nas import genotypes as G

ZOO = ["RelativeNAS", "DARTS_V1", "DARTS_V2", "DARTS", "NASNet", "AmoebaNet"]
CELL = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("max_pool_3x3", 2),
        ("avg_pool_3x3", 1), ("dil_conv_3x3", 3), ("sep_conv_5x5", 4), ("dil_conv_5x5", 0)]


def test_valid_genotype():
    g = Genotype(CELL, [2, 3, 4, 5], CELL, [2, 3, 4, 5])
    assert g.normal[3] == ("max_pool_3x3", 2)


def test_unknown_op_named():
    bad = list(CELL)
    bad[5] = ("conv_9x9", 3)
    with pytest.raises(GenotypeError, match=r"normal\[5\].*conv_9x9"):
        Genotype(bad, [2, 3, 4, 5], CELL, [2, 3, 4, 5])


def test_node_out_of_range_named():
    bad = list(CELL)
    bad[2] = ("skip_connect", 3)  # intermediate node 3 (index 1) takes inputs from 0..2
    with pytest.raises(GenotypeError, match=r"reduce\[2\].*'skip_connect', 3"):
        Genotype(CELL, [2, 3, 4, 5], bad, [2, 3, 4, 5])
    bad[2] = ("skip_connect", -1)
    with pytest.raises(GenotypeError, match=r"reduce\[2\]"):
        Genotype(CELL, [2, 3, 4, 5], bad, [2, 3, 4, 5])


def test_odd_pairs():
    with pytest.raises(GenotypeError, match=r"normal.*even.*7"):
        Genotype(CELL[:7], [2, 3, 4], CELL, [2, 3, 4, 5])


def test_concat_out_of_range_named():
    with pytest.raises(GenotypeError, match=r"reduce_concat.*node 6"):
        Genotype(CELL, [2, 3, 4, 5], CELL, [2, 3, 6])
    with pytest.raises(GenotypeError, match=r"normal_concat"):
        Genotype(CELL, [], CELL, [2, 3])


def test_bad_pair_shape_and_node_type():
    with pytest.raises(GenotypeError, match=r"normal\[0\]"):
        Genotype([("sep_conv_3x3",)] + CELL[1:], [2, 3, 4, 5], CELL, [2, 3, 4, 5])
    with pytest.raises(GenotypeError, match=r"normal\[1\]"):
        Genotype([CELL[0], ("sep_conv_3x3", "a")] + CELL[2:], [2, 3, 4, 5], CELL, [2, 3, 4, 5])


@pytest.mark.parametrize("name", ZOO)
def test_json_yaml_round_trip(name):
    g = get_genotype(name)
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_yaml(g.to_yaml()) == g
    assert Genotype.from_dict(g.to_dict()) == g
    s = str(g)
    assert "\n" not in s and "normal" in s and "reduce" in s


def test_parse_errors():
    with pytest.raises(GenotypeError, match="JSON"):
        Genotype.from_json("{not json")
    with pytest.raises(GenotypeError, match="missing"):
        Genotype.from_json('{"normal": []}')


def test_zoo_contents():
    names = list_genotypes()
    for n in ZOO:
        assert n in names
    assert get_genotype("DARTS") == G.DARTS_V2
    rel = get_genotype("RelativeNAS")
    assert rel.normal[:2] == (("sep_conv_3x3", 0), ("dil_conv_5x5", 1))
    assert rel.reduce[-2:] == (("dil_conv_5x5", 3), ("sep_conv_3x3", 1))
    assert get_genotype("NASNet").reduce_concat == (4, 5, 6)
    assert get_genotype("AmoebaNet").reduce_concat == (3, 4, 6)


def test_unknown_name_lists_known():
    with pytest.raises(KeyError) as e:
        get_genotype("NoSuchNet")
    msg = str(e.value)
    assert "NoSuchNet" in msg
    for n in ("RelativeNAS", "DARTS_V2", "NASNet", "AmoebaNet"):
        assert n in msg


def test_register_genotype():
    g = Genotype(CELL, [2, 3, 4, 5], CELL, [2, 3, 4, 5])
    register_genotype("_test_geno", g)
    try:
        assert get_genotype("_test_geno") == g
        assert "_test_geno" in list_genotypes()
        register_genotype("_test_geno", g)  # same genotype again is fine
        other = get_genotype("RelativeNAS")
        with pytest.raises(KeyError, match="already registered"):
            register_genotype("_test_geno", other)
        register_genotype("_test_geno", other.to_dict(), overwrite=True)
        assert get_genotype("_test_geno") == other
    finally:
        G.GENOTYPES.unregister("_test_geno")


def test_load_from_file(tmp_path):
    g = get_genotype("DARTS_V1")
    for fname in ("g.json", "g.yaml"):
        p = g.save(tmp_path / fname)
        assert get_genotype(str(p)) == g
        assert get_genotype(p) == g
    run = tmp_path / "run"
    run.mkdir()
    g.save(run / "genotype.json")
    assert get_genotype(str(run)) == g  # a search run directory
    with pytest.raises(FileNotFoundError):
        get_genotype(str(tmp_path / "missing.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        get_genotype(str(empty))


def test_passthrough():
    g = get_genotype("NASNet")
    assert get_genotype(g) is g
    assert get_genotype(g.to_dict()) == g


def test_genotype_from_a_failed_or_unfinished_search_dir_says_why(tmp_path):
    """A failed search writes result.json (status failed, the reason) and no genotype.json; the
    message said only 'a directory without a genotype.json (is it a search run directory?)'."""
    import json as _json

    import pytest as _pytest

    from relnas.errors import GenotypeNotFoundError
    from relnas.nas.genotypes import get_genotype

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "result.json").write_text(_json.dumps({"status": "failed", "reason": "every candidate diverged"}))
    with _pytest.raises(GenotypeNotFoundError, match=r"failed and found no genotype \(result.json: every candidate "
                                                     r"diverged\)"):
        get_genotype(str(failed))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "search_state.pt").write_bytes(b"")
    with _pytest.raises(GenotypeNotFoundError, match=r"without a genotype.json yet \(unfinished\? resume="):
        get_genotype(str(unfinished))
    (tmp_path / "other").mkdir()
    with _pytest.raises(GenotypeNotFoundError, match=r"is a directory without a genotype.json"):
        get_genotype(str(tmp_path / "other"))
