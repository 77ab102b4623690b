"""Generic tabular adapter: a CSV/TSV/Parquet file with one row per example, a site column and a binary
label becomes a :class:`~core.tasks.Federation` of sites, with FEDERATED preprocessing.

Flow (:func:`build_tabular_federation`):

1. read and validate the file (:mod:`data_adapters.tabular_io`): content matches the extension,
   column names non-empty and unique, the named columns exist, binary label, no NaN/inf;
2. decide column types: those given in the config, the rest inferred (numbers -> numeric,
   anything else -> categorical); the site, label, id and dropped columns are never features;
3. assign whole sites to roles: test/validation sites by name (then drawn at random with the seed);
   a site with too few labelled positives for training episodes gets no training role (logged);
4. fit the preprocessing from the TRAINING sites' aggregates only
   (:mod:`data_adapters.tabular_preprocessing`) and apply it to every site;
5. stop when a feature column alone ranks the label almost perfectly on the training sites (a label
   leak), naming the columns (:func:`check_leaks`).

Onboarding (:func:`load_tabular_site`) reads one new site's file and applies the SAVED preprocessing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from core.tasks import Federation, Site, SiteDataError, assign_roles
from data_adapters.sources import read_table
from data_adapters.tabular_io import (
    TabularDataError,
    binary_labels,
    category_strings,
    numeric_column,
    require_columns,
    rows_at,
)
from data_adapters.tabular_preprocessing import (label_histograms, leak_scores, merge_statistics, site_statistics,
                                                  transform)

log = logging.getLogger(__name__)

PREPROCESSING_FORMAT = "fml-tabular-v1"


@dataclass
class TabularData:
    """Options of the generic tabular adapter (any CSV/TSV/Parquet with a site and a binary label column)."""

    path: Optional[str] = None
    """Data file (.csv, .csv.gz, .tsv, .parquet, .pq)."""
    site_column: str = "site"
    """Column whose value names the site (institution) of a row; sites are split by it, never rows."""
    label_column: str = "label"
    """Binary label column (0/1, true/false, or two values with positive_label)."""
    positive_label: Optional[str] = None
    """Value of the label column that means positive, for labels that are not 0/1 or true/false."""
    id_columns: list[str] = field(default_factory=list)
    """Identifier columns: checked to exist, then dropped (never features)."""
    drop_columns: list[str] = field(default_factory=list)
    """Other columns to ignore (need not exist)."""
    categorical_columns: Optional[list[str]] = None
    """Columns to one-hot encode; columns not listed in either type list are inferred."""
    numeric_columns: Optional[list[str]] = None
    """Columns to standardize; columns not listed in either type list are inferred."""
    allow_missing: bool = True
    """Encode missing feature values (mean fill + indicator; categorical <missing>); False = error."""
    max_categories: int = 200
    """A categorical column whose union vocabulary is larger is hashed instead of one-hot encoded."""
    hash_buckets: int = 64
    """Buckets of a hashed categorical column."""
    test_sites: list[str] = field(default_factory=list)
    """Held-out test sites by name (site-column values); more are drawn at random up to num_test."""
    validation_sites: list[str] = field(default_factory=list)
    """Validation sites by name; more are drawn at random up to num_validation."""
    num_test: Optional[int] = None
    """Total test sites, named ones included (default: the named ones, or 3 drawn when none is named)."""
    num_validation: Optional[int] = None
    """Total validation sites, named ones included (default: the named ones, or 1 drawn when none is named)."""
    train_shots: int = 5
    """Positives (and negatives) in the support set of a meta-training episode."""
    train_query: int = 10
    """Positives (and negatives) in the query set of a meta-training episode."""
    min_eval_positives: int = 2
    """Fewest labelled positives a test/validation site may have (1 shot + 1 to score)."""
    leak_auroc: float = 0.99
    """A feature column that alone ranks the label at this ROC-AUC (or 1 - it) on the training sites stops the
    run as a likely label leak (per-site label counts, no rows pooled)."""
    allow_leaky_columns: bool = False
    """Proceed although a column looks like a label leak (the run still logs the columns)."""

    #: the options that choose the data and its schema: a run that changes one of them from its default is on
    #: another dataset and registers under its own model name (pipelines/dataset_identity.py)
    DATASET_OPTIONS: ClassVar[tuple[str, ...]] = ("path", "site_column", "label_column", "positive_label",
                                                  "id_columns", "drop_columns", "categorical_columns",
                                                  "numeric_columns")


def infer_column_types(df: pd.DataFrame, cfg: TabularData, source: str) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature columns: given ones first, the rest inferred.

    A column is inferred numeric when its dtype is numeric (not boolean) or every present value parses
    as a number; otherwise categorical.
    """
    special = {cfg.site_column, cfg.label_column, *cfg.id_columns, *cfg.drop_columns}
    given_num, given_cat = list(cfg.numeric_columns or []), list(cfg.categorical_columns or [])
    require_columns(df, given_num, source, role="numeric")
    require_columns(df, given_cat, source, role="categorical")
    both = sorted(set(given_num) & set(given_cat))
    if both:
        raise TabularDataError(f"{source}: column(s) {both} are declared both numeric and categorical; pick one")
    numeric, categorical = [], []
    for col in df.columns:
        if col in special:
            continue
        if col in given_num:
            numeric.append(col)
        elif col in given_cat:
            categorical.append(col)
        elif pd.api.types.is_bool_dtype(df[col]):
            categorical.append(col)
        elif pd.api.types.is_numeric_dtype(df[col]):
            numeric.append(col)
        else:
            parsed = pd.to_numeric(df[col], errors="coerce")
            all_numbers = bool((parsed.notna() == df[col].notna()).all() and df[col].notna().any())
            (numeric if all_numbers else categorical).append(col)
    if not numeric and not categorical:
        raise TabularDataError(f"{source}: no feature columns left after removing {sorted(special)}")
    return numeric, categorical


def load_frame(cfg: TabularData, source: str | Path | pd.DataFrame,
               name: str = "") -> tuple[pd.DataFrame, np.ndarray, list[str], list[str]]:
    """Read and validate a whole file (or an in-memory frame, e.g. generated data, labelled ``name``):
    ``(frame, labels 0/1, numeric columns, categorical columns)``."""
    if isinstance(source, pd.DataFrame):
        df, source = source, name or "<frame>"
    else:
        df, source = read_table(source), str(source)
    require_columns(df, [cfg.site_column, cfg.label_column], source)
    require_columns(df, cfg.id_columns, source, role="id")
    y = binary_labels(df[cfg.label_column], source, cfg.positive_label)
    empty = site_ids_of(df, cfg.site_column).fillna("").eq("").to_numpy()
    if empty.any():
        raise TabularDataError(
            f"{source}: site column {cfg.site_column!r} is empty at {rows_at(empty)}; every row needs a site: "
            "fill the cells or drop the rows"
        )
    numeric, categorical = infer_column_types(df, cfg, source)
    for col in numeric:  # row numbers in errors refer to the whole file
        numeric_column(df[col], source, cfg.allow_missing)
    if not cfg.allow_missing:
        for col in categorical:
            if df[col].isna().any():
                raise TabularDataError(f"{source}: categorical column {col!r} has {int(df[col].isna().sum())} "
                                       "missing value(s); fill them or set allow_missing")
    return df, y, numeric, categorical


def site_ids_of(df: pd.DataFrame, site_column: str) -> pd.Series:
    return category_strings(df[site_column])


def site_roles(positives: dict[str, int], negatives: dict[str, int], cfg: TabularData,
               seed: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Roles by site (:func:`core.tasks.assign_roles`): named sites, then random draws among the sites with
    enough positives and negatives for a training episode.

    Returns:
        ``(roles, excluded)``: roles ``train/validation/test`` -> site ids (train in name order), and
        ``{site: reason}`` for sites that got no role.
    """
    known = sorted(positives)
    desc = ", ".join(f"{s} ({positives[s]} pos / {negatives[s]} neg)" for s in known)
    named = {"test": list(cfg.test_sites), "validation": list(cfg.validation_sites)}
    for role, ids in named.items():
        for sid in ids:
            if sid not in positives:
                raise SiteDataError(f"{role} site {sid!r} is not a value of column {cfg.site_column!r}; "
                                    f"sites: {desc}")
            low = min(positives[sid], negatives[sid])
            if low < cfg.min_eval_positives:
                raise SiteDataError(
                    f"{role} site {sid!r} has {positives[sid]} labelled positive(s) and {negatives[sid]} "
                    f"negative(s) in {cfg.label_column!r}; few-shot evaluation needs at least "
                    f"{cfg.min_eval_positives} of each (1 shot + 1 to score); choose another site. Sites: {desc}"
                )
    overlap = sorted(set(named["test"]) & set(named["validation"]))
    if overlap:
        raise SiteDataError(f"site(s) {overlap} named as both test and validation sites")
    need = cfg.train_shots + cfg.train_query

    def trainable(sid: str) -> Optional[str]:
        if min(positives[sid], negatives[sid]) >= need:
            return None
        return (f"{positives[sid]} positive(s) / {negatives[sid]} negative(s) < {need} needed for a training "
                f"episode ({cfg.train_shots} shots + {cfg.train_query} query per class)")

    num_test = cfg.num_test if cfg.num_test is not None else (len(named["test"]) or 3)
    num_val = cfg.num_validation if cfg.num_validation is not None else (len(named["validation"]) or 1)
    try:
        roles, excluded = assign_roles(known, validation=num_val, test=num_test, seed=seed, test_ids=named["test"],
                                       validation_ids=named["validation"], eligible=trainable)
    except SiteDataError as err:
        raise SiteDataError(f"{err}. Lower train_shots/train_query, or name or draw fewer test/validation sites "
                            f"(data.num_test, data.num_validation). Sites: {desc}") from None
    # training sites in name order, roles listed test first (as runs recorded before this rule have them)
    return {"test": roles["test"], "validation": roles["validation"], "train": sorted(roles["train"])}, excluded


def make_site(site_id: str, frame: pd.DataFrame, y: np.ndarray, prep: dict[str, Any], source: str) -> Site:
    x = transform(frame, prep, f"{source} (site {site_id!r})")
    pos = int(y.sum())
    return Site(site_id, torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)),
                metadata={"rows": int(len(y)), "positives": pos, "base_rate": pos / max(len(y), 1)})


def fit_preprocessing(frames: dict[str, pd.DataFrame], numeric: Sequence[str], categorical: Sequence[str],
                      cfg: TabularData, source: str) -> dict[str, Any]:
    """Fit from the given (training) sites' aggregates; each site's statistics are computed on its own rows."""
    stats = [site_statistics(f, numeric, categorical, f"{source} (site {sid!r})", cfg.allow_missing)
             for sid, f in frames.items()]
    prep = merge_statistics(stats, numeric, categorical, max_categories=cfg.max_categories,
                            hash_buckets=cfg.hash_buckets)
    prep.update({"format": PREPROCESSING_FORMAT, "label_column": cfg.label_column,
                 "positive_label": cfg.positive_label, "site_column": cfg.site_column,
                 "id_columns": list(cfg.id_columns), "training_sites": sorted(frames)})
    return prep


def check_leaks(train: dict[str, tuple[pd.DataFrame, np.ndarray]], prep: dict[str, Any], numeric: Sequence[str],
                cfg: TabularData, source: str) -> dict[str, float]:
    """Stop when a feature column alone ranks the label at ``cfg.leak_auroc`` or better on the training
    sites (each site shares label counts per bin, :func:`label_histograms`); returns the flagged columns."""
    hists = [label_histograms(frame, y, prep, f"{source} (site {sid!r})") for sid, (frame, y) in train.items()]
    leaky = {c: a for c, a in leak_scores(hists, numeric).items() if a >= cfg.leak_auroc}
    if leaky and not cfg.allow_leaky_columns:
        named = ", ".join(f"{c!r} (ROC-AUC {a:.3f})" for c, a in sorted(leaky.items(), key=lambda kv: -kv[1]))
        raise TabularDataError(
            f"{source}: column(s) {named} alone separate the label {cfg.label_column!r} on the training sites: "
            "they likely encode it (a class code, a copy of the label, an outcome recorded later). Drop them "
            "(--data.drop-columns ...), or pass --data.allow-leaky-columns to train with them anyway")
    if leaky:
        log.warning("%s: training with label-like column(s) %s (--data.allow-leaky-columns)", source, sorted(leaky))
    return leaky


def build_tabular_federation(cfg: TabularData, data: str | Path | pd.DataFrame, seed: int,
                             name: str = "") -> tuple[Federation, dict[str, Any], dict[str, str]]:
    """The federation of the sites in ``data`` (a file, or a frame labelled ``name``) with preprocessing
    fitted on its training sites.

    Returns:
        ``(federation, preprocessing, excluded)`` where ``excluded`` maps site ids without a role to the reason.
    """
    source = name or str(data)
    df, y, numeric, categorical = load_frame(cfg, data, source)
    ids = site_ids_of(df, cfg.site_column)
    groups = {sid: np.flatnonzero((ids == sid).to_numpy()) for sid in sorted(ids.unique())}
    pos = {sid: int(y[rows].sum()) for sid, rows in groups.items()}
    neg = {sid: int(len(rows) - y[rows].sum()) for sid, rows in groups.items()}
    roles, excluded = site_roles(pos, neg, cfg, seed)
    frames = {sid: df.iloc[rows] for sid, rows in groups.items()}
    prep = fit_preprocessing({s: frames[s] for s in roles["train"]}, numeric, categorical, cfg, source)
    check_leaks({s: (frames[s], y[groups[s]]) for s in roles["train"]}, prep, numeric, cfg, source)
    sites = {sid: make_site(sid, frames[sid], y[groups[sid]], prep, source)
             for ids_ in roles.values() for sid in ids_}
    return Federation(sites, roles), prep, excluded


def load_tabular_site(data: str | Path | pd.DataFrame, prep: dict[str, Any], site_id: Optional[str],
                      name: str = "") -> Site:
    """One NEW site's rows, transformed with the SAVED preprocessing (onboarding).

    When the file (or frame labelled ``name``) has the site column: with ``site_id`` only that site's
    rows are kept; without it the file must hold exactly one site. Without the site column the whole
    file is the site (id: ``site_id`` or the file name). Rows with an empty label (or every row, when the
    file has no label column: a file of unlabeled inputs) become ``Site.unlabeled``: only site statistics
    read them.
    """
    if isinstance(data, pd.DataFrame):
        df, source = data, name or "<frame>"
    else:
        df, source = read_table(data), str(data)
    label, site_col = prep["label_column"], prep["site_column"]
    if site_col in df.columns:
        ids = site_ids_of(df, site_col)
        present = sorted(ids.dropna().unique().tolist())
        if site_id is None:
            if len(present) != 1:
                raise SiteDataError(f"{source}: column {site_col!r} holds {len(present)} sites {present[:10]}; "
                                    "name the one to onboard (site id)")
            site_id = present[0]
        keep = (ids == site_id).to_numpy()
        if not keep.any():
            raise SiteDataError(f"{source}: no row of site {site_id!r} in column {site_col!r}; sites: {present[:20]}")
        df = df.loc[keep]
    check_schema(df, prep, source)
    sid = site_id or Path(source).name.split(".")[0]
    labelled = df[label].notna().to_numpy() if label in df.columns else np.zeros(len(df), dtype=bool)
    y = binary_labels(df.loc[labelled, label], source, prep.get("positive_label")) if labelled.any() else \
        np.zeros(0, dtype=np.int64)
    site = make_site(sid, df.loc[labelled], y, prep, source)
    if not labelled.all():
        site.unlabeled = torch.from_numpy(transform(df.loc[~labelled], prep, f"{source} (site {sid!r}, unlabeled rows)"))
    return site


def tabular_schema(prep: dict[str, Any]) -> dict[str, Any]:
    """The dataset schema of a fitted preprocessing: feature columns by type, label and site columns (not the
    vocabularies or statistics, which depend on which sites trained)."""
    return {"numeric": [c["name"] for c in prep["numeric"]], "categorical": [c["name"] for c in prep["categorical"]],
            "label": prep["label_column"], "site": prep["site_column"]}


def check_schema(df: pd.DataFrame, prep: dict[str, Any], source: str) -> None:
    """The new site's columns against the model's: one line naming the missing feature columns and the
    columns the model does not know (often the same columns, renamed); unknown columns alone are ignored."""
    features = [s["name"] for s in prep["numeric"]] + [s["name"] for s in prep["categorical"]]
    known = set(features) | {prep["label_column"], prep["site_column"], *prep.get("id_columns", [])}
    missing = [c for c in features if c not in df.columns]
    extra = [str(c) for c in df.columns if c not in known]
    if missing:
        raise TabularDataError(f"{source} does not match the model's schema: missing feature column(s) {missing}"
                               + (f"; column(s) the model does not know: {extra}" if extra else "")
                               + f" (the model was trained on {prep.get('source', 'another table')})")
    if extra:
        log.warning("%s: column(s) %s are not in the model's schema and are ignored", source, extra)
