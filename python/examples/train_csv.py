"""A bring-your-own PyTorch trainer for Cloister: an MLP classifier on a CSV table.

Run by the job runner inside the TEE, e.g. ``cloister train job.json -- python3 train_csv.py`` with
a manifest whose trainer is ``{"command": ["python3", "train_csv.py"], "files": ["train_csv.py",
"cloister_train.py"]}``. Everything it needs comes from the training API (python/cloister_train.py):

- the job: the unsealed CSV's path, the hyperparameters, the seed and the output folder;
- the latest checkpoint, if an earlier run of the job was stopped: it resumes from there;
- checkpoints every ``checkpointEvery`` steps (model, optimizer, step and RNG states), sealed by the
  runner, and metrics every step;
- ``finish`` once ``model.pt`` and ``metrics.json`` are in the output folder.

Deterministic: the seed fixes the split, the initial weights and every batch; one CPU thread and
deterministic algorithms fix the arithmetic. A run stopped at any point and resumed from its latest
checkpoint ends with the same ``model.pt``, byte for byte, as a run never stopped.

Hyperparameters (all optional): ``steps`` (200), ``batch`` (32), ``lr`` (0.01), ``hidden`` (32, or a
list of widths), ``label`` (the class column; default: the last column), ``features`` (columns;
default: all others, numeric), ``heldOut`` (0.2), ``checkpointEvery`` (20), ``input`` (the input's
name; default: the first).
"""

import csv
import json
import os
import sys

# The client sits next to this file in a job, one folder up in the repository.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch  # noqa: E402

from cloister_train import TrainingClient, load_torch_checkpoint, save_torch_checkpoint  # noqa: E402


def fail(message):
    print(f"train_csv: {message}", file=sys.stderr)
    sys.exit(2)


def hyper(hp, name, kind, default):
    """``hp[name]`` checked against ``kind``, or ``default``; a bad value names the field and stops."""
    value = hp.get(name, default)
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
        what = "integer" if kind is int else "number"
        fail(f"hyperparameters.{name}: expected a non-negative {what}, got {value!r}")
    return value


def read_table(path, label, features):
    """The CSV as a float feature matrix, class indices and the class names (sorted)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        fail(f"{path}: no rows")
    columns = list(rows[0].keys())
    label = label or columns[-1]
    if label not in columns:
        fail(f"hyperparameters.label: no column {label!r} in {columns}")
    features = features or [c for c in columns if c != label]
    for c in features:
        if c not in columns:
            fail(f"hyperparameters.features: no column {c!r} in {columns}")
    classes = sorted({r[label] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    x = []
    for n, r in enumerate(rows, start=2):
        try:
            x.append([float(r[c]) for c in features])
        except (TypeError, ValueError):
            fail(f"{path}:{n}: a feature is not a number")
    y = [index[r[label]] for r in rows]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long), classes, features


def build_model(inputs, hidden, classes):
    layers, width = [], inputs
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    client = TrainingClient()
    job = client.job()
    hp = job.get("hyperparameters") or {}
    seed = int(job["seed"])
    steps = hyper(hp, "steps", int, 200)
    batch = max(1, hyper(hp, "batch", int, 32))
    lr = float(hyper(hp, "lr", (int, float), 0.01))
    hidden = hp.get("hidden", 32)
    hidden = [hidden] if isinstance(hidden, int) else hidden
    if not isinstance(hidden, list) or not all(isinstance(h, int) and h > 0 for h in hidden):
        fail(f"hyperparameters.hidden: expected a width or a list of widths, got {hidden!r}")
    held_out = float(hyper(hp, "heldOut", (int, float), 0.2))
    every = max(1, hyper(hp, "checkpointEvery", int, 20))

    inputs = job["inputs"]
    name = hp.get("input") or next(iter(inputs), None)
    if name not in inputs:
        fail(f"hyperparameters.input: no input {name!r} in the job (inputs: {sorted(inputs)})")
    x, y, classes, features = read_table(inputs[name], hp.get("label"), hp.get("features"))

    # The split, the initial weights and the batches all follow from the seed.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * held_out)
    test, train = order[:n_test], order[n_test:]
    if len(train) == 0:
        fail("hyperparameters.heldOut: leaves no rows to train on")
    mean = x[train].mean(0)
    std = x[train].std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std

    torch.manual_seed(seed)
    model = build_model(len(features), hidden, len(classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(seed + 1)
    loss_fn = torch.nn.CrossEntropyLoss()

    done = 0
    ckpt = load_torch_checkpoint(client)
    if ckpt is not None:
        if ckpt.get("job") != job["job"]:
            fail("the latest checkpoint belongs to another job")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        batches.set_state(ckpt["batches"])
        torch.set_rng_state(ckpt["torch_rng"])
        done = ckpt["step"]
        print(f"train_csv: resuming after step {done}", file=sys.stderr)

    model.train()
    for step in range(done + 1, steps + 1):
        pick = train[torch.randint(len(train), (batch,), generator=batches)]
        logits = model(x[pick])
        loss = loss_fn(logits, y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(1) == y[pick]).float().mean().item()
        client.metrics(step, loss=loss.item(), batch_accuracy=accuracy)
        if step % every == 0:
            save_torch_checkpoint(
                client,
                {
                    "job": job["job"],
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "batches": batches.get_state(),
                    "torch_rng": torch.get_rng_state(),
                },
                step,
            )

    model.eval()
    final = {"steps": steps}
    with torch.no_grad():
        if n_test > 0:
            logits = model(x[test])
            final["heldout_loss"] = loss_fn(logits, y[test]).item()
            final["heldout_accuracy"] = (logits.argmax(1) == y[test]).float().mean().item()
        final["train_loss"] = loss_fn(model(x[train]), y[train]).item()

    out = job["outputDir"]
    torch.save(
        {
            "model": model.state_dict(),
            "hidden": hidden,
            "features": features,
            "classes": classes,
            "mean": mean,
            "std": std,
        },
        os.path.join(out, "model.pt"),
    )
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(final, f, indent=2, sort_keys=True)
        f.write("\n")
    client.finish(**final)
    print(f"train_csv: done, {json.dumps(final, sort_keys=True)}", file=sys.stderr)


if __name__ == "__main__":
    main()
