"""Grids of training and evaluation runs, and the reports made from them.

An experiment folder (written by `sbmoe experiment`, read by `sbmoe report`):

    DIR/experiment.json        the resolved experiment configuration and provenance
    DIR/results.jsonl          one line per (run, evaluation collection, routing mode), rebuilt as runs finish
    DIR/runs/<run_id>/         one folder per training run (or the untrained base, system "zero-shot"):
        done.json              written last: the run is complete (a folder without it is redone)
        training_config.json, train_log.jsonl, training_summary.json   (trained systems)
        model files            (only when the experiment keeps models)
        eval/<collection>/<mode>/metrics.json, run.trec                 (mode folder "none" without a block;
                                                                        topk:K is "topk-K")

A results.jsonl line:

    {"run_id": "scifact/minilm-l6/sbmoe-learned-n6/seed1",
     "system": "sbmoe-learned",   # the label: zero-shot, finetune, adapter, random-gate, sbmoe-faithful, ...
     "base": "minilm-l6", "train_dataset": "scifact",   # null for zero-shot; "a+b" trained on a and b
     "num_experts": 6,                     # null without a block; 1 for adapter
     "seed": 1,                            # null for zero-shot
     "eval_dataset": "scifact", "split": "test",
     "setting": "in-domain",               # in-domain (a training collection) | zero-shot
     "mode": "top1",                       # top1 | all | topk:K | random, null without a block
     "metrics": {"ndcg@10": 0.65, "recall@100": 0.93, "mrr@10": ..., "map@100": ..., "p@1": ...,
                 "ndcg@3": ...},
     "metrics_file": "runs/scifact/minilm-l6/sbmoe-learned-n6/seed1/eval/scifact/top1/metrics.json"}

metrics_file is relative to DIR; its "per_query" maps each metric to {query id: value}, the input of the
significance tests.
"""
