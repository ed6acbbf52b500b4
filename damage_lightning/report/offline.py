"""The offline analysis: the three sections written from the run's facts alone, without a network.

Every sentence quotes a number from :func:`damage_lightning.report.facts.summarise_run`, so the
text can be checked against the tables of the report.
"""

from __future__ import annotations

from typing import Any

from damage_lightning.report.facts import IMBALANCE_RATIO, WEAK_RECALL
from damage_lightning.report.text import as_number, format_number, format_percent


def _f(value: Any) -> str:
    return format_number(value)


def offline_sections(facts: dict[str, Any]) -> dict[str, str]:
    """Write the three sections from the numbers alone (no network)."""
    if facts.get("novelty"):
        from damage_lightning.report.novelty_analysis import novelty_sections

        return novelty_sections(facts, _offline_dynamics(facts))
    return {
        "Executive summary": _offline_summary(facts),
        "Training dynamics": _offline_dynamics(facts),
        "Recommendations": _offline_recommendations(facts),
    }


def _offline_summary(facts: dict[str, Any]) -> str:
    model = facts["model_name"] or "The model"
    params = facts.get("parameters")
    n_cls = len(facts["classes"])
    parts = [
        f"{model}"
        + (f" ({format_number(int(params))} parameters)" if params is not None else "")
        + f" was trained to tell {n_cls} classes apart"
        + (
            f" from {format_number(int(facts['n_recordings']))} recordings"
            if facts.get("n_recordings") is not None
            else ""
        )
        + "."
    ]
    if facts["epochs_run"]:
        stop = (
            f"early stopping ended training at epoch {facts['last_epoch']}"
            if facts["stopped_early"]
            else f"training ran to epoch {facts['last_epoch']}"
        )
        parts.append(
            f"It ran {facts['epochs_run']} epochs ({stop}); the best epoch by validation loss "
            f"is {facts['best_epoch']} (val loss {_f(facts['best_val_loss'])})."
        )
    else:
        parts.append("The training history is empty, so the training dynamics cannot be judged.")
    test = facts.get("test")
    if test:
        parts.append(
            f"On the test split the best checkpoint reaches accuracy "
            f"{format_percent(test['accuracy'])} and macro F1 {_f(test['f1_macro'])}."
        )
    else:
        parts.append("There are no test metrics in model_info.json (the run was not tested).")
    if facts["weak_recall"]:
        w = facts["weak_recall"][0]
        parts.append(
            f"The weakest class is {w['class']} with recall {_f(w['recall'])}"
            + (f", most often mistaken for {w['top']['predicted']}" if w["top"] else "")
            + "."
        )
    elif facts["per_class"]:
        low = min(
            ((n, m["recall"]) for n, m in facts["per_class"].items() if m["recall"] is not None),
            key=lambda p: p[1],
            default=None,
        )
        if low:
            parts.append(f"Every class has recall of at least {_f(low[1])} ({low[0]} is lowest).")
    if facts["overfitting"]:
        parts.append(
            f"Validation loss rose {format_percent(facts['val_loss_rise_after_min'])} above its "
            "minimum while training loss did not: the model overfits late in training, and "
            "the best checkpoint (not the last) is the one exported."
        )
    leak = facts.get("leakage")
    if leak:
        if leak.get("passed"):
            parts.append("The split passed the leakage check: no recording or range is shared.")
        else:
            parts.append(
                f"The split FAILED the leakage check ({leak.get('overlapping_ranges')} "
                "overlapping ranges): the test metrics are optimistic."
            )
    return " ".join(parts)


def _offline_dynamics(facts: dict[str, Any]) -> str:
    if not facts["epochs_run"]:
        return "No epochs were recorded in training_history.json."
    paras = []
    vmin = facts.get("val_loss_min")
    if vmin:
        paras.append(
            f"Validation loss bottomed out at {_f(vmin['value'])} in epoch {vmin['epoch']}; at the "
            f"last epoch ({facts['last_epoch']}) it was "
            f"{format_percent(facts['val_loss_rise_after_min'])} above that minimum."
        )
    bullets = []
    for label, key in (("best", "at_best"), ("last", "at_last")):
        p = facts.get(key) or {}
        if p.get("loss_gap") is not None or p.get("acc_gap") is not None:
            bullets.append(
                f"- Gap at the {label} epoch ({p['epoch']}): val loss - train loss = "
                f"{_f(p.get('loss_gap'))} ({_f(p.get('val_loss'))} vs {_f(p.get('train_loss'))}), "
                f"train acc - val acc = {format_percent(p.get('acc_gap'))}."
            )
    if facts["overfitting"]:
        bullets.append(
            f"- Overfitting: after epoch {vmin['epoch']} val loss rose "
            f"{format_percent(facts['val_loss_rise_after_min'])} (to {_f(facts['val_loss_last'])}) "
            f"while train loss went from {_f(facts['train_loss_at_min'])} to "
            f"{_f(facts['train_loss_last'])}."
        )
    for p in facts["plateaus"]:
        bullets.append(
            f"- Plateau: no new val-loss minimum from epoch {p['start']} to {p['end']} "
            f"({p['length']} epochs)."
        )
    for r in facts["lr_reductions"]:
        effect = (
            f"a new val-loss minimum followed in epoch {r['first_new_best_epoch']}"
            if r["improved_after"]
            else "no new val-loss minimum followed"
        )
        bullets.append(
            f"- LR reduced at epoch {r['epoch']} from {_f(r['from'])} to {_f(r['to'])}: {effect}."
        )
    if not facts["lr_reductions"] and facts.get("lr_first") is not None:
        bullets.append(f"- The learning rate stayed at {_f(facts['lr_first'])} throughout.")
    es = facts.get("early_stopping")
    if facts["stopped_early"]:
        bullets.append(
            f"- Early stopping triggered at epoch {es.get('stopped_epoch', facts['last_epoch'])} "
            f"(patience {es.get('patience', 'n/a')}), {facts['last_epoch'] - facts['best_epoch']} "
            f"epochs after the best epoch {facts['best_epoch']}."
        )
    elif facts["still_improving"]:
        bullets.append(
            f"- Validation loss was still reaching new minima at the last epoch "
            f"({facts['last_epoch']}); training stopped at max_epochs, not by early stopping."
        )
    else:
        bullets.append(
            f"- Training ran to epoch {facts['last_epoch']} without early stopping; the best "
            f"epoch was {facts['best_epoch']}."
        )
    if facts.get("train_time_s") is not None:
        bullets.append(f"- Training took {facts['train_time_s']:.0f} s in total.")
    return "\n\n".join([*paras, "\n".join(bullets)])


def _offline_recommendations(facts: dict[str, Any]) -> str:
    recs = []
    leak = facts.get("leakage")
    if leak and not leak.get("passed"):
        recs.append(
            f"- Fix the split before trusting any metric: the leakage check found "
            f"{leak.get('overlapping_ranges')} overlapping ranges between splits."
        )
    if facts["overfitting"]:
        dropout = (facts.get("hyperparameters") or {}).get("dropout")
        rise = format_percent(facts["val_loss_rise_after_min"])
        recs.append(
            f"- Reduce overfitting: val loss rose {rise}"
            f" after epoch {facts['val_loss_min']['epoch']} while train loss did not; raise "
            "dropout"
            + (f" (now {_f(dropout)})" if as_number(dropout) is not None else "")
            + " or weight decay, or add recordings."
        )
    for w in facts["weak_recall"]:
        top = w["top"]
        recs.append(
            f"- Improve class {w['class']}: recall {_f(w['recall'])} is below {WEAK_RECALL}"
            + (
                f"; {top['count']} of its test windows were predicted as {top['predicted']}"
                if top
                else ""
            )
            + ". Add recordings of this class or enable class weights."
        )
    if not facts["weak_recall"] and facts["confused_pairs"]:
        p = facts["confused_pairs"][0]
        recs.append(
            f"- The most frequent confusion is {p['true']} -> {p['predicted']} ({p['count']} test "
            "windows); inspect those recordings first if accuracy must improve."
        )
    ratio = facts.get("imbalance_ratio")
    if ratio is not None and ratio > IMBALANCE_RATIO:
        tw = facts["train_windows"]
        hi = max(tw, key=tw.get)
        lo = min(tw, key=tw.get)
        recs.append(
            f"- Balance the training data: {hi} has {format_number(int(tw[hi]))} training windows "
            f"and {lo} only {format_number(int(tw[lo]))} (ratio {ratio:.1f}); use class weights "
            "in the loss or more recordings of the small class."
        )
    if facts["still_improving"]:
        recs.append(
            f"- Train longer: validation loss still improved in the last epoch "
            f"({facts['last_epoch']}); raise max_epochs above {_f(facts.get('max_epochs'))}."
        )
    reds = facts["lr_reductions"]
    if reds and not reds[-1]["improved_after"]:
        r = reds[-1]
        recs.append(
            f"- The last LR reduction (epoch {r['epoch']}, to {_f(r['to'])}) gave no new "
            "val-loss minimum; a shorter early-stopping patience would end such runs sooner."
        )
    gap = facts.get("val_test_acc_gap")
    if gap is not None and gap > 0.03:
        recs.append(
            f"- Test accuracy is {format_percent(gap)} below validation accuracy at the best "
            "epoch; check whether the test recordings differ (sessions, sensors) from the others."
        )
    if facts["data_warnings"]:
        recs.append(
            f"- Review the {facts['data_warnings']} data warning(s) listed under Model and dataset."
        )
    if not recs:
        test = facts.get("test") or {}
        recs.append(
            "- No problem stands out"
            + (f" (test accuracy {format_percent(test.get('accuracy'))})" if test else "")
            + "; before deployment, confirm the result on recordings from a new session."
        )
    return "\n".join(recs)
