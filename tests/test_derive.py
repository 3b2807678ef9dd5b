"""Tests for jaxnas.derive: rules on hand-made weights, genotype formats, bad input."""

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import derive as dv
from jaxnas.derive import DARTS_OPS, NB201_OPS, Genotype
from jaxnas.errors import JaxnasError

NONE, MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(8)


def _normal_weights():
  """A normal cell whose answer is worked out by hand in test_darts_top2_by_hand."""
  w = np.zeros((14, 8))
  # node 0 (edges 0-1, from states 0-1): edge 1 is stronger, so it is listed first.
  w[0, SEP3] = 0.5
  w[1, SKIP] = 0.6
  # node 1 (edges 2-4, from 0-2): edge 2 is mostly 'none' (0.9), which must not count.
  w[2, NONE], w[2, MAX] = 0.9, 0.1
  w[3, DIL3] = 0.3
  w[4, SEP5] = 0.2
  # node 2 (edges 5-8, from 0-3): edges 5, 6, 7 tie at 0.4, so states 0 and 1 win; on edge 6
  # max_pool and sep_conv_3x3 tie, so max_pool (the earlier op) wins.
  w[5, AVG] = 0.4
  w[6, MAX], w[6, SEP3] = 0.4, 0.4
  w[7, DIL5] = 0.4
  w[8, SEP5] = 0.1
  # node 3 (edges 9-13, from 0-4): edge 9 is all 'none'; edge 13 then edge 11 are strongest.
  w[9, NONE] = 1.0
  w[10, SEP5] = 0.05
  w[11, SKIP] = 0.65
  w[12, SEP5] = 0.05
  w[13, SEP3] = 0.7
  return w


_NORMAL = (("skip_connect", 1), ("sep_conv_3x3", 0),
           ("dil_conv_3x3", 1), ("sep_conv_5x5", 2),
           ("avg_pool_3x3", 0), ("max_pool_3x3", 1),
           ("sep_conv_3x3", 4), ("skip_connect", 2))
# Uniform weights (as at initialisation): every comparison ties, so the lowest index wins.
_UNIFORM_REDUCE = (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4


def _nb201_weights():
  w = np.zeros((6, 5))
  w[0, 0], w[0, 3] = 0.5, 0.3   # 1<-0: 'none' is heaviest and NB201 keeps it
  w[1, 3] = 0.6                  # 2<-0: nor_conv_3x3
  w[2, 1], w[2, 4] = 0.3, 0.3   # 2<-1: skip_connect ties avg_pool_3x3; the earlier op wins
  w[3, 2] = 0.9                  # 3<-0: nor_conv_1x1
  w[4, :] = 0.2                  # 3<-1: all equal, so 'none' (index 0)
  w[5, 4] = 0.7                  # 3<-2: avg_pool_3x3
  return w


_NB201_STRING = "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|"


# --- layouts ------------------------------------------------------------------------------------


def test_darts_edge_layout():
  assert dv.darts_edge_sources() == (
      (0, 0), (0, 1),
      (1, 0), (1, 1), (1, 2),
      (2, 0), (2, 1), (2, 2), (2, 3),
      (3, 0), (3, 1), (3, 2), (3, 3), (3, 4))
  assert dv.NB201_EDGES == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
  assert DARTS_OPS[0] == NB201_OPS[0] == "none"
  assert len(DARTS_OPS) == 8 and len(NB201_OPS) == 5


def test_layouts_agree_with_the_search_spaces():
  spaces = pytest.importorskip("jaxnas.spaces")
  assert tuple(spaces.DARTS_OPS) == DARTS_OPS
  assert tuple(spaces.NB201_OPS) == NB201_OPS
  assert tuple(map(tuple, spaces.DARTS_EDGES)) == dv.darts_edge_sources()
  assert tuple(map(tuple, spaces.NB201_EDGES)) == dv.NB201_EDGES


# --- rules --------------------------------------------------------------------------------------


def test_darts_top2_by_hand():
  reduce = np.full((14, 8), 1 / 8)
  g = dv.darts_top2({"normal": _normal_weights(), "reduce": reduce})
  assert g == Genotype(normal=_NORMAL, normal_concat=(2, 3, 4, 5), reduce=_UNIFORM_REDUCE,
                       reduce_concat=(2, 3, 4, 5), space="darts")
  assert g.space == "darts"


def test_darts_ignores_none_even_when_it_dominates_every_edge():
  w = np.full((14, 8), 0.01)
  w[:, NONE] = 0.9
  w[np.arange(14), 1 + np.arange(14) % 7] = 0.05  # edge e's best real op is op 1 + e % 7
  g = dv.derive("darts-top2", {"normal": w, "reduce": w})
  assert all(op != "none" for op, _ in g.normal + g.reduce)
  # All strengths tie at 0.05, so each node keeps states 0 and 1 (edges offset, offset + 1).
  assert g.normal == (("max_pool_3x3", 0), ("avg_pool_3x3", 1),
                      ("skip_connect", 0), ("sep_conv_3x3", 1),
                      ("dil_conv_3x3", 0), ("dil_conv_5x5", 1),
                      ("skip_connect", 0), ("sep_conv_3x3", 1))


def test_darts_rule_ranks_softmax_weights_not_logits():
  # Edge 1's best real logit (skip, 3) beats edge 0's (sep_conv_3x3, 2), but its 'none' logit of 6
  # takes most of its softmax mass: skip gets e^3 / (e^6 + e^3 + 6) = 0.047 against edge 0's
  # e^2 / (e^2 + 7) = 0.51, so after softmax edge 0 is the stronger. Every other row is zero, so
  # its softmax is exactly uniform and the lowest indices win.
  alphas = jnp.zeros((14, 8)).at[0, SEP3].set(2.0).at[1, NONE].set(6.0).at[1, SKIP].set(3.0)
  weights = {"normal": jax.nn.softmax(alphas, axis=-1),
             "reduce": jax.nn.softmax(jnp.zeros((14, 8)), axis=-1)}
  g = dv.derive("darts-top2", weights, DARTS_OPS)
  assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1)) + _UNIFORM_REDUCE[2:]
  assert g.reduce == _UNIFORM_REDUCE


def test_darts_without_none_lets_every_op_compete():
  ops = DARTS_OPS[1:]  # FairDARTS' seven operations
  w = np.zeros((14, 7))
  w[0, 0], w[1, 6] = 0.2, 0.9
  g = dv.darts_top2({"normal": w, "reduce": w}, ops)
  assert g.normal[:2] == (("dil_conv_5x5", 1), ("max_pool_3x3", 0))


def test_nb201_argmax_by_hand_keeps_none_and_breaks_ties_low():
  g = dv.nb201_argmax({"cell": _nb201_weights()})
  assert g == Genotype(
      normal=(("none", 0), ("nor_conv_3x3", 0), ("skip_connect", 1),
              ("nor_conv_1x1", 0), ("none", 1), ("avg_pool_3x3", 2)),
      normal_concat=(3,), space="nb201")
  assert dv.derive("nb201-argmax", {"cell": jnp.asarray(_nb201_weights())}) == g


def test_rules_registry():
  assert set(dv.RULES) == {"darts-top2", "nb201-argmax", "fairdarts-sparse", "fairdarts-edge",
                           "darts-plus-skip-limit", "pr-darts-top2", "pc-darts-top2",
                           "ddarts-sparse", "ddarts-edge"}
  with pytest.raises(JaxnasError, match=r"^unknown derivation rule 'top3'; choose one of: "
                     r"darts-plus-skip-limit, darts-top2, ddarts-edge, ddarts-sparse, "
                     r"fairdarts-edge, fairdarts-sparse, nb201-argmax, pc-darts-top2, "
                     r"pr-darts-top2$"):
    dv.derive("top3", {"cell": _nb201_weights()})


# --- string formats -----------------------------------------------------------------------------


def test_darts_str_is_the_reference_notation():
  g = dv.darts_top2({"normal": _normal_weights(), "reduce": np.full((14, 8), 1 / 8)})
  assert str(g) == (
      "Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
      "('sep_conv_5x5', 2), ('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 4), "
      "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
      "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
      "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def test_darts_str_reproduces_a_genotype_line_of_quark0_darts():
  # The 'DARTS' genotype as cnn/genotypes.py of quark0/darts writes it, character for character.
  line = ("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
          "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
          "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
          "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
          "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
          "reduce_concat=[2, 3, 4, 5])")
  normal = [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)]
  reduce = [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]
  g = Genotype(normal=normal, normal_concat=[2, 3, 4, 5], reduce=reduce,
               reduce_concat=range(2, 6))
  assert str(g) == line


def test_nb201_strings():
  g = dv.nb201_argmax({"cell": _nb201_weights()})
  assert str(g) == _NB201_STRING
  assert dv.nb201_arch_string(g) == _NB201_STRING
  assert dv.genotype_from_nb201_string(_NB201_STRING) == g
  assert dv.genotype_from_nb201_string(f"  {_NB201_STRING}\n") == g


@pytest.mark.parametrize("arch", [
    "",
    "|none~0|+|none~0|none~1|",                                           # two nodes
    "|none~0|+|none~0|none~1|+|none~0|none~1|",                           # node 3 short
    "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",                    # wrong source
    "none~0|+|none~0|none~1|+|none~0|none~1|none~2|",                     # missing bar
    "|none0|+|none~0|none~1|+|none~0|none~1|none~2|",                     # missing tilde
])
def test_bad_nb201_strings(arch):
  with pytest.raises(JaxnasError, match=r"is not a NAS-Bench-201 architecture string; write it "
                     r"like '\|nor_conv_3x3~0\|"):
    dv.genotype_from_nb201_string(arch)


def test_nb201_string_with_unknown_op():
  with pytest.raises(JaxnasError, match=r"^unknown NAS-Bench-201 operation 'conv_3x3'; choose one "
                     r"of: avg_pool_3x3, none, nor_conv_1x1, nor_conv_3x3, skip_connect$"):
    dv.genotype_from_nb201_string("|conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|")


def test_nb201_string_of_a_darts_genotype():
  g = Genotype(normal=_NORMAL, normal_concat=(2, 3, 4, 5))
  with pytest.raises(JaxnasError, match=r"^only nb201 genotypes have a NAS-Bench-201 string"):
    dv.nb201_arch_string(g)


# --- the Genotype record ------------------------------------------------------------------------


def test_genotype_is_frozen_hashable_and_normalises_values():
  g = Genotype(normal=[["sep_conv_3x3", np.int64(0)], [np.str_("skip_connect"), 1]],
               normal_concat=np.array([2]))
  assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1))
  assert type(g.normal[0][1]) is int and type(g.normal[1][0]) is str
  assert g.normal_concat == (2,) and type(g.normal_concat[0]) is int
  assert g.reduce == () and g.reduce_concat == () and g.space == "darts"
  assert hash(g) == hash(Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1)),
                                  normal_concat=(2,)))
  assert isinstance(g, tuple) and g._fields == ("normal", "normal_concat", "reduce",
                                                "reduce_concat", "space")
  with pytest.raises(AttributeError):
    g.space = "nb201"
  assert pickle.loads(pickle.dumps(g)) == g
  with pytest.raises(JaxnasError, match=r"reads state 7"):
    g._replace(normal=(("sep_conv_3x3", 7), ("skip_connect", 1)))


def test_json_round_trip_and_layout():
  darts = dv.darts_top2({"normal": _normal_weights(), "reduce": np.full((14, 8), 1 / 8)})
  nb201 = dv.nb201_argmax({"cell": _nb201_weights()})
  for g in (darts, nb201):
    text = g.to_json()
    assert "\n" not in text
    assert Genotype.from_json(text) == g
    assert Genotype.from_dict(json.loads(text)) == g
  assert json.loads(nb201.to_json()) == {
      "space": "nb201",
      "normal": [["none", 0], ["nor_conv_3x3", 0], ["skip_connect", 1],
                 ["nor_conv_1x1", 0], ["none", 1], ["avg_pool_3x3", 2]],
      "normal_concat": [3],
      "reduce": [],
      "reduce_concat": [],
  }
  # Optional fields may be left out of hand-written files.
  assert Genotype.from_json('{"normal": [["skip_connect", 0], ["none", 1]], '
                            '"normal_concat": [2]}') == Genotype(
                                normal=(("skip_connect", 0), ("none", 1)), normal_concat=(2,))


def test_fairdarts_triples_round_trip_and_print_in_the_reference_notation():
  # FairDARTS_a of xiaomi-automl/FairDARTS fairdarts/genotypes.py: node 3 of the normal cell has
  # no input, node 4 one; concat stays range(2, 6).
  normal = [("sep_conv_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("max_pool_3x3", 4, 0),
            ("sep_conv_3x3", 5, 0)]
  reduce = [("max_pool_3x3", 2, 0), ("avg_pool_3x3", 2, 1), ("avg_pool_3x3", 3, 0),
            ("dil_conv_5x5", 3, 1), ("avg_pool_3x3", 4, 0), ("sep_conv_5x5", 4, 1),
            ("skip_connect", 5, 0), ("skip_connect", 5, 1)]
  g = Genotype(normal=normal, normal_concat=range(2, 6), reduce=reduce, reduce_concat=range(2, 6))
  assert str(g) == (
      "Genotype(normal=[('sep_conv_3x3', 2, 0), ('sep_conv_5x5', 2, 1), ('max_pool_3x3', 4, 0), "
      "('sep_conv_3x3', 5, 0)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 2, 0), "
      "('avg_pool_3x3', 2, 1), ('avg_pool_3x3', 3, 0), ('dil_conv_5x5', 3, 1), "
      "('avg_pool_3x3', 4, 0), ('sep_conv_5x5', 4, 1), ('skip_connect', 5, 0), "
      "('skip_connect', 5, 1)], reduce_concat=[2, 3, 4, 5])")
  assert Genotype.from_json(g.to_json()) == g
  assert json.loads(g.to_json())["normal"][2] == ["max_pool_3x3", 4, 0]
  # An odd number of genes is fine in this form (a node may have one input).
  assert len(Genotype(normal=[("sep_conv_3x3", 2, 1)], normal_concat=[2]).normal) == 1


def test_save_and_load(tmp_path):
  g = dv.nb201_argmax({"cell": _nb201_weights()})
  written = g.save(tmp_path)
  assert written == tmp_path / "genotype.json"
  assert Genotype.load(tmp_path) == g
  assert Genotype.load(written) == g
  other = g.save(tmp_path / "best.json")
  assert Genotype.load(other) == g
  with pytest.raises(JaxnasError, match=r"^no genotype file at .*missing.json; pass a "
                     r"genotype.json or a run directory holding one$"):
    Genotype.load(tmp_path / "missing.json")


@pytest.mark.parametrize("text, message", [
    ("{not json", r"^genotype is not valid JSON \(.*\); write it as Genotype.to_json\(\) does$"),
    ("[1, 2]", r"^a genotype must be a JSON object, got list$"),
    ('{"normal": [], "normal_concat": [], "colour": "red"}',
     r"^genotype has unknown fields \['colour'\]; its fields are \['normal', "),
    ('{"normal": []}', r"^genotype lacks \['normal_concat'\]; its fields are "),
    ('{"normal": [["sep_conv_3x3"]], "normal_concat": [2]}',
     r"^genotype normal\[0\] is \['sep_conv_3x3'\]; expected an \(op name, input\) pair or an "
     r"\(op name, node, input\) triple$"),
    ('{"normal": [["sep_conv_3x3", "0"]], "normal_concat": [2]}',
     r"^genotype normal\[0\]'s input is '0'; expected a whole number$"),
    ('{"normal": [["a", 0], ["b", 1]], "normal_concat": [2], "space": "nb301"}',
     r"^unknown genotype space 'nb301'; choose one of: darts, nb201$"),
    ('{"normal": [["a", 0], ["b", 1]], "normal_concat": [6]}',
     r"^genotype normal_concat is \[6\]; it must list states among 2..2"),
    ('{"normal": [["a", 0], ["b", 1], ["c", 0]], "normal_concat": [2]}',
     r"^genotype normal has 3 genes; a darts cell takes two inputs per node"),
    ('{"normal": [], "normal_concat": []}', r"^a darts genotype needs at least one node"),
    ('{"normal": [["a", 0], ["b", 1]], "normal_concat": [2], "reduce_concat": [2]}',
     r"^genotype reduce_concat is \[2\] but reduce has no nodes$"),
    ('{"normal": [["none", 0]], "normal_concat": [3], "space": "nb201"}',
     r"^an nb201 genotype needs 6 \(op, from_node\) pairs with from_nodes \[0, 0, 1, 0, 1, 2\]"),
    # FairDARTS' (op, node, input) triples.
    ('{"normal": [["a", 2, 0], ["b", 1]], "normal_concat": [2]}',
     r"^genotype normal mixes \(op, input\) pairs and \(op, node, input\) triples"),
    ('{"normal": [["a", 1, 0]], "normal_concat": [2]}',
     r"^genotype normal\[0\] \('a', 1, 0\) is not an edge of a darts cell"),
    ('{"normal": [["a", 3, 3]], "normal_concat": [2]}',
     r"^genotype normal\[0\] \('a', 3, 3\) is not an edge of a darts cell"),
    ('{"normal": [["a", 3, 0], ["b", 2, 1]], "normal_concat": [2, 3]}',
     r"^genotype normal\[1\] \('b', 2, 1\) comes after a gene of node 3; list \(op, node, input\) "
     r"triples node by node$"),
    ('{"normal": [["a", 2, 0]], "normal_concat": [1, 2]}',
     r"^genotype normal_concat is \[1, 2\]; it must list states ≥ 2"),
    ('{"normal": [["a", 2, "x"]], "normal_concat": [2]}',
     r"^genotype normal\[0\]'s input is 'x'; expected a whole number$"),
    ('{"normal": [["none", 1, 0], ["none", 2, 0], ["none", 2, 1], ["none", 3, 0], ["none", 3, 1], '
     '["none", 3, 2]], "normal_concat": [3], "space": "nb201"}',
     r"^an nb201 genotype needs 6 \(op, from_node\) pairs"),
])
def test_bad_genotype_json(text, message):
  with pytest.raises(JaxnasError, match=message):
    Genotype.from_json(text)


# --- bad weights --------------------------------------------------------------------------------


def test_wrong_shape_names_expected_and_received():
  good = np.zeros((14, 8))
  with pytest.raises(JaxnasError, match=r"^weights\['normal'\] has shape \(14, 7\) but the darts "
                     r"space with 8 ops expects \(14, 8\)$"):
    dv.derive("darts-top2", {"normal": np.zeros((14, 7)), "reduce": good})


def test_every_mismatch_is_reported_at_once():
  with pytest.raises(JaxnasError, match=r"^weights\['normal'\] has shape \(14,\) .*; "
                     r"weights\['reduce'\] has shape \(8, 14\) but the darts space with 8 ops "
                     r"expects \(14, 8\)$"):
    dv.darts_top2({"normal": np.zeros(14), "reduce": np.zeros((8, 14))})


def test_op_names_set_the_expected_width():
  w = np.zeros((6, 5))
  with pytest.raises(JaxnasError, match=r"^weights\['cell'\] has shape \(6, 5\) but the nb201 "
                     r"space with 4 ops expects \(6, 4\)$"):
    dv.derive("nb201-argmax", {"cell": w}, NB201_OPS[:4])


@pytest.mark.parametrize("weights, message", [
    ({"normal": np.zeros((14, 8))}, r"^weights has keys \['normal'\] but the darts space expects "
                                    r"a dict with keys \['normal', 'reduce'\]$"),
    ({"cell": np.zeros((6, 5))}, r"^weights has keys \['cell'\] but the darts space expects"),
    (np.zeros((14, 8)), r"^weights has keys ndarray but the darts space expects"),
    ({"normal": np.full((14, 8), np.nan), "reduce": np.zeros((14, 8))},
     r"^weights\['normal'\] holds NaN or infinite values; derive from finite mixing weights"),
    ({"normal": np.full((14, 8), "a"), "reduce": np.zeros((14, 8))},
     r"^weights\['normal'\] has dtype <U1; pass real-valued mixing weights$"),
])
def test_bad_darts_weights(weights, message):
  with pytest.raises(JaxnasError, match=message):
    dv.darts_top2(weights)


def test_nb201_wrong_layout():
  with pytest.raises(JaxnasError, match=r"^weights has keys \['normal', 'reduce'\] but the nb201 "
                     r"space expects a dict with keys \['cell'\]$"):
    dv.nb201_argmax({"normal": np.zeros((14, 8)), "reduce": np.zeros((14, 8))})
  with pytest.raises(JaxnasError, match=r"^weights\['cell'\] has shape \(14, 8\) but the nb201 "
                     r"space with 5 ops expects \(6, 5\)$"):
    dv.nb201_argmax({"cell": np.zeros((14, 8))})


@pytest.mark.parametrize("op_names, message", [
    ((), r"^op_names is \[\]; pass distinct operation names"),
    (("none", "none"), r"^op_names is \['none', 'none'\]; pass distinct operation names"),
    (("none",), r"^darts-top2 needs an operation other than 'none'"),
])
def test_bad_op_names(op_names, message):
  w = np.zeros((14, len(op_names)))
  with pytest.raises(JaxnasError, match=message):
    dv.darts_top2({"normal": w, "reduce": w}, op_names)
