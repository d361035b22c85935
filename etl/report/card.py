"""The model card: the intended use, the data, the model, its limitations, the libraries and the lineage of a
version, the last section of its report."""

from __future__ import annotations

import html

from etl.report.page import Page, const, na

LIMITATIONS = (
    "<li>The calibration rests on few rows between the extremes: read a probability with its bin's row "
    "count in the reliability table in mind.</li>"
    "<li>The data are old and from one place: the Wisconsin Breast Cancer (Original) data, fine-needle "
    f"aspirates collected {const('1989')}&ndash;{const('1991')} at one hospital (University of Wisconsin "
    "Hospitals, Madison), scored by one group. Scoring practice, population and the share of malignant "
    "tumours elsewhere or today may differ; nothing here was validated on other data.</li>"
    "<li>The held-out rows are few: their figures are noisy by construction and decide nothing.</li>"
    "<li>The nested estimates and the reference set come from the same source as the training data: they "
    "measure how the procedure generalises within it, not to another clinic.</li>"
)
INTENDED_USE = (
    "<p>Decision support for research on breast-tumour cytology: the probability that a tumour is malignant "
    "from nine scores a cytologist assigns. Not a medical device; not clinically validated; it must not be "
    "used to diagnose, treat or make decisions about any patient.</p>"
)


def model_card(page: Page) -> str:
    """The model card as an HTML section."""
    n, t = page.number, page.text
    r, ref = "rows", "reference"
    data = (
        f"<dl><dt>source</dt><dd>{t('data_source')}</dd><dt>sha256</dt><dd><code>{t('data_sha256')}</code></dd>"
        f"<dt>rows</dt><dd>{n(r, 'raw', fmt='d')} read; {n(r, 'missing_dropped', fmt='d')} dropped for a "
        f"missing value (never guessed); {n(r, 'duplicates_dropped', fmt='d')} dropped as exact duplicates; "
        f"{n(r, 'clean', fmt='d')} clean, of which {n('class_counts', 'data', 'benign', fmt='d')} benign and "
        f"{n('class_counts', 'data', 'malignant', fmt='d')} malignant</dd>"
        f"<dt>use</dt><dd>{n(r, 'reference_excluded', fmt='d')} rows of the reference set's patients set "
        f"aside (never trained on); {n(r, 'train', fmt='d')} training and {n(r, 'test', fmt='d')} held-out "
        "rows</dd><dt>patients</dt><dd>grouped by <code>Id</code>: no patient is on both sides of the split "
        f"or of any fold; {n('nested', 'patients', fmt='d')} patients in the nested CV</dd>"
        f"<dt>reference set</dt><dd>{n(ref, 'rows', fmt='d')} rows ({n(ref, 'malignant', fmt='d')} "
        f"malignant, {n(ref, 'benign', fmt='d')} benign, {n(ref, 'patients', fmt='d')} patients), "
        f"{t(ref, 'source')}, sha256 <code>{t(ref, 'sha256')}</code></dd></dl>"
    )
    classifier = page.get("params", "classifier")
    params = (
        ", ".join(f"{html.escape(k)}={page.value('params', 'classifier', k)}" for k in sorted(classifier))
        if isinstance(classifier, dict)
        else na()
    )
    features = page.get("params", "features")
    feature_list = (
        ", ".join(t("params", "features", i) for i in range(len(features)))
        if isinstance(features, list)
        else na()
    )
    model = (
        f"<dl><dt>model</dt><dd>{t('params', 'model')} on the nine cytology scores: {feature_list}</dd>"
        f"<dt>classifier parameters</dt><dd>{params}</dd>"
        f"<dt>calibration</dt><dd>{t('calibration')}, fitted on out-of-fold decision values "
        f"({n('params', 'inner_folds', fmt='d')} patient-grouped folds)</dd>"
        f"<dt>threshold</dt><dd>{n('threshold', fmt='.4f')}, for TARGET_RECALL "
        f"{n('params', 'target_recall', fmt='g')}</dd>"
        f"<dt>seed</dt><dd>{n('params', 'seed', fmt='d')}</dd></dl>"
    )
    versions = page.get("versions")
    libraries = (
        ", ".join(f"{html.escape(k)} {t('versions', k)}" for k in sorted(versions))
        if isinstance(versions, dict)
        else na()
    )
    parent = (
        t("lineage", "parent_version")
        if isinstance(page.get("lineage", "parent_version"), str)
        else "none: no model was served when this version was trained"
    )
    return (
        f'<section id="card"><h2>Model card</h2><h3>Intended use</h3>{INTENDED_USE}'
        f"<h3>Data</h3>{data}<h3>Model</h3>{model}<h3>Limitations</h3><ul>{LIMITATIONS}</ul>"
        f"<h3>Libraries</h3><p>{libraries}</p>"
        f"<h3>Lineage</h3><dl><dt>version</dt><dd>{t('model_version')}</dd>"
        f"<dt>parent (served when it was trained)</dt><dd>{parent}</dd>"
        f"<dt>trained</dt><dd>{t('trained_at')}</dd><dt>evaluated</dt><dd>{t('evaluated_at')}</dd></dl></section>"
    )
