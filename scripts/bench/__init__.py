"""tformer's side-by-side training benchmark: ours against Hugging Face and torch.nn.TransformerEncoder.

Run from the repository root:

    python -m scripts.bench                 # full size (~8 minutes on 2 cores), table + outputs/bench/bench.json
    python -m scripts.bench --smoke         # tiny sizes, seconds: checks that the benchmark still runs
    python -m scripts.bench --commands      # also whole commands: `tformer train` against a Trainer script
    python -m scripts.bench --finetune      # also MiniLM fine-tuning: tformer, a plain loop and Trainer

`transformers` and `accelerate` are optional (`pip install -e '.[bench]'`); without them the Hugging Face
rows are skipped with a note.
"""
