"""A model's weights fingerprint: the same weights exported twice match though the files differ;
`imgpipe rollback` records it, and the Evaluator refuses a candidate trained again to those weights."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import tensorflow as tf

from components.evaluator import same_weights_rolled_back
from serving.model_fingerprint import ROLLBACK_LOG, rolled_back_models, weights_fingerprint


def _export(path: str, weights, classes: str = "a\nb\n", activation=tf.nn.softmax) -> str:
    """A small model with its weights folded into the graph as constants (as the Trainer exports),
    traced anew for each export, so TensorFlow gives its functions new names."""
    w = np.asarray(weights, np.float32)

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def serve(self, x):
            return {"scores": activation(tf.matmul(x, tf.constant(w)))}

    model = Model()
    # predict_images too: what imgpipe's exports carry (a rollback serves no version without it).
    signatures = {"serving_default": model.serve, "predict_images": model.serve}
    tf.saved_model.save(model, path, signatures=signatures)
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)
    with open(os.path.join(path, "assets", "label_vocab"), "w", encoding="utf-8") as f:
        f.write(classes)
    return path


def test_the_same_weights_exported_again_match_though_the_files_differ(tmp_path):
    first = _export(str(tmp_path / "a"), [[1.0, 2.0], [3.0, 4.0]])
    again = _export(str(tmp_path / "b"), [[1.0, 2.0], [3.0, 4.0]])
    with (
        open(os.path.join(first, "saved_model.pb"), "rb") as f,
        open(os.path.join(again, "saved_model.pb"), "rb") as g,
    ):
        assert f.read() != g.read()  # TensorFlow numbered the second export's functions anew
    assert weights_fingerprint(first) == weights_fingerprint(again)
    other = _export(str(tmp_path / "c"), [[1.0, 2.0], [3.0, 4.5]])
    assert weights_fingerprint(other) != weights_fingerprint(first)
    relabelled = _export(str(tmp_path / "d"), [[1.0, 2.0], [3.0, 4.0]], classes="b\na\n")
    assert weights_fingerprint(relabelled) != weights_fingerprint(first)  # the label vocabulary counts
    # The same weights behind another serving graph (a fix to it): another model.
    fixed = _export(str(tmp_path / "e"), [[1.0, 2.0], [3.0, 4.0]], activation=tf.nn.sigmoid)
    assert weights_fingerprint(fixed) != weights_fingerprint(first)


def test_the_log_keeps_the_models_taken_out_and_not_served_again(tmp_path):
    log = tmp_path / ROLLBACK_LOG
    lines = [
        {
            "marked": [{"version": "2", "fingerprint": "B"}, {"version": "3", "fingerprint": "C"}],
            "note": "first",
        },
        {"served": {"version": "4", "copy_of": "1"}},
        "not json",
        {
            "marked": [{"version": "4", "fingerprint": "A"}],
            "restored_model": {"fingerprint": "B"},
            "note": "undo",
        },
    ]
    log.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8"
    )
    assert rolled_back_models(str(log)) == {"C": "first", "A": "undo"}
    assert rolled_back_models(str(tmp_path / "none.jsonl")) == {}


def test_a_candidate_trained_again_to_rolled_back_weights_is_refused(tmp_path):
    """The Evaluator's check: a new artifact (a retrain after `--no-cache`, or after a prune deleted
    the cached lineage) carries no mark, but its weights are those of a model rolled back."""
    served = _export(str(tmp_path / "served"), [[0.5, 1.0], [2.0, 0.0]])
    log = tmp_path / ROLLBACK_LOG
    note = "rolled back on 2026-12-06T10:00:00Z: served version 2 replaced by version 1's model"
    entry = {"marked": [{"version": "2", "fingerprint": weights_fingerprint(served)}], "note": note}
    log.write_text(json.dumps(entry) + "\n", encoding="utf-8")
    retrained = _export(str(tmp_path / "retrained"), [[0.5, 1.0], [2.0, 0.0]])
    assert same_weights_rolled_back(retrained, str(log)) == f"{note}, and this candidate has its weights"
    other = _export(str(tmp_path / "other"), [[0.5, 1.0], [2.0, 0.25]])
    assert same_weights_rolled_back(other, str(log)) == ""
    assert same_weights_rolled_back(retrained, str(tmp_path / "no-log.jsonl")) == ""
    assert same_weights_rolled_back(retrained, None) == ""


def test_rollback_records_the_weights_of_every_version_it_takes_out(tmp_path):
    """Real exports in the serving dir: the log names each version taken out with its weights."""
    from imgpipe.orchestration.rollback import rollback_home
    from tests.test_rollback import History

    h = History(tmp_path)
    weights = {
        "100": [[1.0, 0.0], [0.0, 1.0]],
        "200": [[0.0, 1.0], [1.0, 0.0]],
        "300": [[2.0, 1.0], [1.0, 2.0]],
    }
    for version, w in weights.items():
        model, _ = h.run(version.encode(), version)
        shutil.rmtree(os.path.join(h.serving, version))
        serving = os.path.join(model.uri, "Format-Serving")
        shutil.rmtree(serving)
        _export(serving, w)
        shutil.copytree(serving, os.path.join(h.serving, version))
    result = rollback_home(h.home.home, to="100")
    refused = rolled_back_models(os.path.join(h.home.home, ROLLBACK_LOG))
    again = {v: weights_fingerprint(_export(str(tmp_path / f"again{v}"), w)) for v, w in weights.items()}
    assert set(refused) == {again["200"], again["300"]}
    assert [m["version"] for m in result.marked] == ["200", "300"]
    # Rolled forward on purpose to 300: its weights are eligible again, 200's still refused.
    rollback_home(h.home.home, to="300", undo=True)
    assert set(rolled_back_models(os.path.join(h.home.home, ROLLBACK_LOG))) == {again["200"]}


def test_an_unreadable_model_has_no_fingerprint_in_a_rollback(tmp_path):
    from imgpipe.orchestration.rollback import _fingerprint

    os.makedirs(tmp_path / "v")
    (tmp_path / "v" / "saved_model.pb").write_bytes(b"not a SavedModel")
    assert _fingerprint(str(tmp_path / "v")) is None  # warned; the rollback goes on


def test_a_re_export_of_the_same_weights_is_the_same_model_to_the_pusher(tmp_path):
    """The first run after an upgrade that keyed ExampleGen anew retrained to the served weights;
    its saved_model.pb differed in TensorFlow's function names only, and the Pusher, comparing
    bytes, pushed it as a new version of the served model (an audit)."""
    from components.pusher import same_model

    first = _export(str(tmp_path / "a"), [[1.0, 2.0], [3.0, 4.0]])
    again = _export(str(tmp_path / "b"), [[1.0, 2.0], [3.0, 4.0]])
    assert same_model(first, again) and same_model(first, first)
    assert not same_model(first, _export(str(tmp_path / "c"), [[1.0, 2.0], [3.0, 4.5]]))
    assert not same_model(first, _export(str(tmp_path / "d"), [[1.0, 2.0], [3.0, 4.0]], classes="b\na\n"))
    assert not same_model(
        first, _export(str(tmp_path / "e"), [[1.0, 2.0], [3.0, 4.0]], activation=tf.nn.sigmoid)
    )
    # One file more: another model, whatever the graph.
    shutil.copytree(again, tmp_path / "f")
    os.makedirs(tmp_path / "f" / "assets.extra")
    (tmp_path / "f" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"x")
    assert not same_model(first, str(tmp_path / "f"))
    # Other warmup requests (a retrain on the same train split, new eval data): the same model,
    # re-exported or not; another file of assets.extra/ (the TFLite model) is another model.
    for base, name in ((first, "g"), (again, "h")):
        shutil.copytree(base, tmp_path / name)
        os.makedirs(tmp_path / name / "assets.extra")
        (tmp_path / name / "assets.extra" / "tf_serving_warmup_requests").write_bytes(name.encode())
        (tmp_path / name / "assets.extra" / "model.tflite").write_bytes(b"lite")
    assert same_model(str(tmp_path / "f"), str(tmp_path / "g")) is False  # no model.tflite in f
    assert same_model(str(tmp_path / "g"), str(tmp_path / "h"))
    (tmp_path / "h" / "assets.extra" / "model.tflite").write_bytes(b"another")
    assert not same_model(str(tmp_path / "g"), str(tmp_path / "h"))
