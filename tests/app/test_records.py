"""The prediction record through the API in-process (app/routes/records.py, the ids in /predict answers, the
PREDICTION_LOG modes, live figures in GET /models/current and /metrics). Real uvicorn processes, kill -9 and
database outages: tests/integration/test_prediction_record.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.records.database import database_url
from app.records.store import PredictionStore
from etl.db import make_engine
from etl.features import FEATURE_COLUMNS, FEATURE_NAMES
from etl.monitoring import confusion, drift, quality
from tests.app.conftest import AUTH, BENIGN, MALIGNANT, Served, client_for, named, sample
from tests.conftest import free_port
from tests.pipeline_support import bundled_complete_rows
from tests.waiting import wait_until

ROUTE_JSON = {"Content-Type": "application/vnd.api+json"}  # FastAPI parses it; the fast path leaves it


@pytest.fixture
def store(served: Served) -> Iterator[PredictionStore]:
    engine = make_engine(database_url(served.settings()))
    yield PredictionStore(engine)
    engine.dispose()


def real_rows() -> list[tuple[list[int], int]]:
    """(nine scores, Class) of every complete row of the bundled CSV."""
    frame = bundled_complete_rows()
    return [(list(map(int, row[:-1])), int(row[-1])) for row in frame[[*FEATURE_COLUMNS, "Class"]].to_numpy()]


def metric_lines(client: TestClient, name: str) -> dict[str, float]:
    """label text -> value of every sample of ``name`` in one /metrics scrape."""
    found = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            found[labels] = float(value)
    return found


# --- ids in answers, records read back --------------------------------------------------------------


def test_predict_answers_on_record_under_their_ids(client: TestClient, served: Served) -> None:
    single = client.post("/predict", json=MALIGNANT).json()
    route = client.post("/predict", json=named(BENIGN.values()), headers=ROUTE_JSON).json()
    batch = client.post("/predict/batch", json={"instances": [BENIGN, MALIGNANT]}).json()
    answers = [single, route] + [{**p, **batch} for p in batch["predictions"]]
    sent = [MALIGNANT, BENIGN, BENIGN, MALIGNANT]
    assert len({a["prediction_id"] for a in answers}) == 4
    for answer, body in zip(answers, sent, strict=True):
        r = client.get(
            f"/predictions/{answer['prediction_id']}", headers=AUTH
        )  # found at once: flushed first
        assert r.status_code == 200, r.text
        record = r.json()
        assert record["features"] == body
        for key in ("prediction_id", "model_version", "threshold", "probability_malignant", "class", "label"):
            assert record[key] == answer[key], key
        assert record["model_version"] == served.version
        assert record["outcome"] is None and record["history"] == []
        assert record["created_at"].endswith("Z") or record["created_at"].endswith("+00:00")


def test_prediction_record_unknown_404_malformed_422_no_token_401(client: TestClient) -> None:
    r = client.get("/predictions/0123456789abcdef-0000000000", headers=AUTH)
    assert r.status_code == 404 and r.json()["detail"].startswith("no prediction on record with id")
    for bad in ("x", "0123456789ABCDEF-0000000000", "0123456789abcdef-00", "0123456789abcdef_0000000000"):
        assert client.get(f"/predictions/{bad}", headers=AUTH).status_code == 422, bad
    assert client.get("/predictions/0123456789abcdef-0000000000").status_code == 401
    assert client.post("/feedback", json={"prediction_id": "x", "actual_class": 3}).status_code == 401


# --- POST /feedback ---------------------------------------------------------------------------------


def test_feedback_first_repeat_conflict_replace(client: TestClient) -> None:
    answer = client.post("/predict", json=MALIGNANT).json()
    pid = answer["prediction_id"]
    first = client.post("/feedback", json={"prediction_id": pid, "actual_class": 1}, headers=AUTH)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["prediction_id"] == pid and body["actual_class"] == 1 and body["actual_label"] == "malignant"
    assert body["predicted_class"] == answer["class"] and body["correct"] == (answer["class"] == 1)
    again = client.post("/feedback", json={"prediction_id": pid, "actual_class": 1}, headers=AUTH)
    assert (again.status_code, again.json()) == (200, body)  # the same answer again
    conflict = client.post("/feedback", json={"prediction_id": pid, "actual_class": 0}, headers=AUTH)
    assert conflict.status_code == 409 and "replace" in conflict.json()["detail"]
    replaced = client.post(
        "/feedback", json={"prediction_id": pid, "actual_class": 0, "replace": True}, headers=AUTH
    )
    assert replaced.status_code == 200 and replaced.json()["actual_class"] == 0
    assert replaced.json()["reported_at"] >= body["reported_at"]
    record = client.get(f"/predictions/{pid}", headers=AUTH).json()
    assert [h["actual_class"] for h in record["history"]] == [1, 0]
    assert record["outcome"] == record["history"][-1]
    assert record["history"][0]["reported_at"] == body["reported_at"]


def test_feedback_list_all_or_none(client: TestClient, store: PredictionStore) -> None:
    ids = [
        p["prediction_id"]
        for p in client.post("/predict/batch", json={"instances": [BENIGN] * 3}).json()["predictions"]
    ]
    unknown = "ffffffffffffffff-0000000000"
    items = [{"prediction_id": i, "actual_class": 0} for i in ids]
    r = client.post("/feedback", json=[*items, {"prediction_id": unknown, "actual_class": 1}], headers=AUTH)
    assert r.status_code == 404 and unknown in r.json()["detail"]
    assert all(store.get(i)["actual_class"] is None for i in ids)  # type: ignore[index]
    r = client.post("/feedback", json=items, headers=AUTH)
    assert r.status_code == 200 and [a["prediction_id"] for a in r.json()] == ids
    assert all(a["correct"] for a in r.json())


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"actual_class": 2}, ["body", "FeedbackRequest", "actual_class"]),
        ({"actual_class": -1}, ["body", "FeedbackRequest", "actual_class"]),
        ({"actual_class": "1"}, ["body", "FeedbackRequest", "actual_class"]),
        ({"actual_class": 1.0}, ["body", "FeedbackRequest", "actual_class"]),
        ({"actual_class": True}, ["body", "FeedbackRequest", "actual_class"]),
        ({"actual_class": None}, ["body", "FeedbackRequest", "actual_class"]),
        ({"actual_class": 1, "prediction_id": "nope"}, ["body", "FeedbackRequest", "prediction_id"]),
        ({"actual_class": 1, "patient": "x"}, ["body", "FeedbackRequest", "patient"]),
        ({"actual_class": 1, "replace": "yes"}, ["body", "FeedbackRequest", "replace"]),
    ],
)
def test_feedback_bad_report_422_names_field(
    client: TestClient, body: dict[str, Any], loc: list[Any]
) -> None:
    pid = client.post("/predict", json=BENIGN).json()["prediction_id"]
    r = client.post("/feedback", json={"prediction_id": pid, **body}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert loc in [error["loc"] for error in r.json()["detail"]], r.json()


def test_feedback_list_limits_and_disagreeing_reports_422(served: Served) -> None:
    with client_for(served.settings(max_batch=3)) as client:
        ids = [
            p["prediction_id"]
            for _ in range(2)
            for p in client.post("/predict/batch", json={"instances": [BENIGN] * 2}).json()["predictions"]
        ]
        too_many = [{"prediction_id": i, "actual_class": 0} for i in ids]
        r = client.post("/feedback", json=too_many, headers=AUTH)
        assert r.status_code == 422 and "MAX_BATCH=3" in r.json()["detail"][0]["msg"]
        assert client.post("/feedback", json=[], headers=AUTH).status_code == 422
        disagree = [
            {"prediction_id": ids[0], "actual_class": 0},
            {"prediction_id": ids[0], "actual_class": 1},
        ]
        r = client.post("/feedback", json=disagree, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", 1, "actual_class"]
        agree = [{"prediction_id": ids[0], "actual_class": 1}] * 2
        r = client.post("/feedback", json=agree, headers=AUTH)
        assert r.status_code == 200 and r.json()[0] == r.json()[1]


# --- PREDICTION_LOG modes -----------------------------------------------------------------------------


def test_prediction_log_off_no_ids_nothing_recorded(served: Served, store: PredictionStore) -> None:
    with client_for(served.settings(prediction_log="off")) as client:
        single = client.post("/predict", json=BENIGN)
        route = client.post("/predict", json=BENIGN, headers=ROUTE_JSON)
        batch = client.post("/predict/batch", json={"instances": [BENIGN, MALIGNANT]})
        routed_batch = client.post("/predict/batch", json={"instances": [BENIGN]}, headers=ROUTE_JSON)
        for r in (single, route, batch, routed_batch):
            assert r.status_code == 200, r.text
        assert "prediction_id" not in single.json() and single.json() == route.json()
        assert all(
            "prediction_id" not in p for p in batch.json()["predictions"] + routed_batch.json()["predictions"]
        )
        assert client.get("/models/current").json()["live"]["labelled"] == 0
    assert store.count() == 0


def test_prediction_log_sync_committed_before_answer(served: Served, store: PredictionStore) -> None:
    with client_for(served.settings(prediction_log="sync")) as client:
        for n in range(1, 4):
            pid = client.post("/predict", json=BENIGN).json()["prediction_id"]
            assert store.count() == n and store.existing([pid]) == {pid}  # no flush: it is already there
        ids = [
            p["prediction_id"]
            for p in client.post("/predict/batch", json={"instances": [MALIGNANT] * 5}).json()["predictions"]
        ]
        assert store.existing(ids) == set(ids)


def test_prediction_log_sync_database_down_503_fast_path_and_route(served: Served) -> None:
    down = f"postgresql://nobody:pw@127.0.0.1:{free_port()}/predictions"
    with client_for(served.settings(prediction_log="sync", prediction_db_url=down)) as client:
        before = sample(client.get("/metrics").text, 'bcd_predictions_total{label="benign"}')
        fast = client.post("/predict", json=BENIGN)
        route = client.post("/predict", json=BENIGN, headers=ROUTE_JSON)
        batch = client.post("/predict/batch", json={"instances": [BENIGN]})
        for r in (fast, route, batch):
            assert r.status_code == 503, r.text
            assert r.json()["detail"].startswith("the prediction record database is unavailable")
        assert fast.json() == route.json()
        assert "pw@" not in fast.text
        # a refused answer is not a served prediction
        assert sample(client.get("/metrics").text, 'bcd_predictions_total{label="benign"}') == before
        assert client.get("/models/current").json()["live"] is None


def test_prediction_log_async_database_down_answers_and_queues(served: Served) -> None:
    down = f"postgresql://nobody:pw@127.0.0.1:{free_port()}/predictions"
    with client_for(served.settings(prediction_db_url=down, prediction_log_queue_rows=3)) as client:
        before = metric_lines(client, "bcd_prediction_log_dropped_total")['{reason="queue_full"}']
        answers = [client.post("/predict", json=BENIGN) for _ in range(5)]
        assert all(r.status_code == 200 and r.json()["prediction_id"] for r in answers)
        after = metric_lines(client, "bcd_prediction_log_dropped_total")['{reason="queue_full"}']
        assert after - before == 2  # capacity 3: the other two are answered, not recorded, and counted
        assert (
            client.post(
                "/feedback",
                json={"prediction_id": answers[0].json()["prediction_id"], "actual_class": 0},
                headers=AUTH,
            ).status_code
            == 503
        )


# --- live figures -----------------------------------------------------------------------------------


def test_live_figures_equal_independent_count(served: Served) -> None:
    """60 real rows answered one by one; outcomes for 50 of them (their real class, 7 flipped), reported in
    another order. The live window is the newest 40 labelled predictions by answer time: its counts and
    ratios, in GET /models/current and /metrics, equal a count made here from the answers and outcomes."""
    rows = real_rows()[::11][:60]
    settings = served.settings(live_window=40, live_min_labelled=10, live_cache_seconds=0)
    with client_for(settings) as client:
        answers = [client.post("/predict", json=named(scores)).json() for scores, _ in rows]
        truth = {a["prediction_id"]: cls for a, (_, cls) in zip(answers, rows, strict=True)}
        labelled = [a["prediction_id"] for a in answers][5:55]
        flipped = set(labelled[::8])
        outcomes = {pid: 1 - truth[pid] if pid in flipped else truth[pid] for pid in labelled}
        order = list(np.random.default_rng(3).permutation(labelled))
        r = client.post(
            "/feedback", json=[{"prediction_id": p, "actual_class": outcomes[p]} for p in order], headers=AUTH
        )
        assert r.status_code == 200, r.text

        window = [a for a in answers if a["prediction_id"] in outcomes][-40:]
        counts = confusion([a["class"] for a in window], [outcomes[a["prediction_id"]] for a in window])
        expected = quality(counts)
        assert counts["fp"] + counts["fn"] >= 1 and counts["tp"] >= 1 and counts["tn"] >= 1
        live = client.get("/models/current").json()["live"]
        assert live["labelled"] == 40 and live["counts"] == counts and live["min_labelled"] == 10
        assert {name: live[name] for name in expected} == pytest.approx(expected)
        scraped = metric_lines(client, "bcd_live_quality_ratio")
        assert scraped == pytest.approx(
            {f'{{metric="{name}",version="{served.version}"}}': value for name, value in expected.items()}
        )
        assert metric_lines(client, "bcd_live_labelled_predictions") == {
            f'{{version="{served.version}"}}': 40.0
        }


def test_live_ratios_hidden_below_min_labelled(served: Served) -> None:
    with client_for(served.settings(live_min_labelled=5, live_cache_seconds=0)) as client:
        ids = [client.post("/predict", json=MALIGNANT).json()["prediction_id"] for _ in range(4)]
        client.post("/feedback", json=[{"prediction_id": i, "actual_class": 1} for i in ids], headers=AUTH)
        live = client.get("/models/current").json()["live"]
        assert live["labelled"] == 4 and live["counts"]["tp"] == 4 and live["recall"] is None
        assert metric_lines(client, "bcd_live_quality_ratio") == {}
        assert list(metric_lines(client, "bcd_live_labelled_predictions").values()) == [4.0]


def test_drift_skewed_stream_raises_skewed_features_only(served: Served) -> None:
    """300 rows drawn from the data stay below 0.1 on every feature; then 300 rows whose clump thickness and
    mitoses are forced to 10 (the window is 300: only those) move exactly those two above 0.2."""
    rows = np.array([scores for scores, _ in real_rows()], dtype=int)
    sample_rows = rows[np.random.default_rng(11).integers(0, len(rows), size=300)]
    settings = served.settings(
        drift_window=300, drift_min_predictions=300, live_cache_seconds=0, prediction_log_flush_seconds=0.05
    )
    meta = served.registry.read_meta(served.version)
    with client_for(settings) as client:

        def drift_over(n: int) -> dict[str, Any] | None:
            found: dict[str, Any] = client.get("/models/current").json()["drift"]
            return found if found["predictions"] == n else None  # written: the writer runs every 0.05 s

        client.post("/predict/batch", json={"instances": [named(r.tolist()) for r in sample_rows[:299]]})
        assert wait_until(lambda: drift_over(299), 30, "299 predictions written")["psi"] is None  # < minimum
        assert metric_lines(client, "bcd_feature_drift_psi") == {}
        client.post("/predict", json=named(sample_rows[299].tolist()))
        calm = wait_until(lambda: drift_over(300), 30, "300 predictions written")
        assert set(calm["psi"]) == set(FEATURE_NAMES) and max(calm["psi"].values()) < 0.1, calm
        skewed = sample_rows.copy()
        skewed[:, FEATURE_NAMES.index("clump_thickness")] = 10
        skewed[:, FEATURE_NAMES.index("mitoses")] = 10
        client.post("/predict/batch", json={"instances": [named(r.tolist()) for r in skewed]})
        # the figure computed here from the training distribution in meta.json, once the batch is written
        expected = drift(meta["feature_distribution"], skewed)

        def scraped() -> dict[str, float] | None:
            lines = metric_lines(client, "bcd_feature_drift_psi")
            psi = {labels.split('"')[1]: value for labels, value in lines.items()}
            return psi if psi == pytest.approx(expected) else None

        psi = wait_until(scraped, 30, "the skewed batch in the drift gauges")
        assert {name for name, value in psi.items() if value > 0.2} == {"clump_thickness", "mitoses"}, psi
        assert all(psi[name] < 0.1 for name in FEATURE_NAMES if name not in ("clump_thickness", "mitoses"))
        assert all(
            f'version="{served.version}"' in labels
            for labels in metric_lines(client, "bcd_feature_drift_psi")
        )
