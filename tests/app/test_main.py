"""The app factory and its lifespan (app/main.py): what a start does with the state folder."""

from __future__ import annotations

from tests.app.conftest import BENIGN, Served, client_for


def test_startup_refuses_tampered_served_model(served: Served):
    model = served.base / "results" / "models" / served.version / "model.json"
    model.write_bytes(model.read_bytes() + b" ")
    (served.base / "results" / "model.joblib").unlink()  # nothing to fall back on
    with client_for(served.settings()) as c:
        assert c.get("/ready").status_code == 503
        assert c.post("/predict", json=BENIGN).status_code == 503


def test_startup_recovers_leftovers_and_resyncs_mirror(served: Served):
    results = served.base / "results"
    staging = results / "models" / ".tmp-20990101T000000Z-00000000"
    staging.mkdir()
    (staging / "model.joblib").write_bytes(b"half")
    (results / "model.joblib").write_bytes(b"stale mirror")
    with client_for(served.settings()) as c:
        assert c.get("/ready").json() == {"status": "ready", "model_version": served.version}
        assert c.get("/models").json()["served_version"] == served.version
    assert not staging.exists()
    vdir = results / "models" / served.version
    assert (results / "model.joblib").read_bytes() == (vdir / "model.joblib").read_bytes()
