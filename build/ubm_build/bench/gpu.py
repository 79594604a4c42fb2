"""The GPU benchmark: our model on a CUDA GPU, in this process and (where a tritonserver is
installed) served, over the same test-day records as ``make bench``.

``run`` measures, in rounds whose order alternates (median round per row):

- ``pytorch_<fp32|fp16>_<device>_b<size>``: what the server does per batch (behaviour text,
  session features, tokenization), the encoder in PyTorch (`torch_model.TorchSession`, as the
  GPU repository serves it) and the head on the CPU;
- ``encoder_only_fp16_<device>_b<size>``: the encoder alone on pre-tokenized batches, so the
  cost of preprocessing shows against the GPU's;
- ``onnxruntime_cuda_b<size>`` and ``tensorrt_fp16_b<size>`` where ONNX Runtime has its CUDA
  provider and TensorRT imports (else a one-line reason each);
- ``served_c<n>`` through a tritonserver on a ``--device cuda`` repository, when one runs here.

Each GPU form is gated on the whole test window against the PyTorch CPU reference
(``evaluation.npz``): max |p - reference| and the ROC-AUC loss, which must stay within
`MAX_AUC_LOSS`. Timed calls end with ``torch.cuda.synchronize()``.

``pack`` writes what the GPU machine needs (under `PACK_LIMIT_BYTES`): the encoder in fp16
safetensors, which every GPU row then loads (fp32 rows upcast it), and the rest of the model
directory with only the evaluation arrays the gates read.

Without CUDA (``--device cpu``) the same rows run on the CPU, marked so: a dry run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ubm import contract
from ubm.records import Record
from ubm_build import data, options, paths
from ubm_build.bench import report
from ubm_build.bench.rows import Row, describe, in_rounds, summarise_batches, time_calls
from ubm_build.bench.workload import Batch, batches_of, sample_records
from ubm_build.inputs.model_inputs import RecordReader
from ubm_build.model.network import BehaviourModel, Head, ModelSpec, load_reader
from ubm_build.serving.triton_models.engine_model import Session
from ubm_build.serving.triton_models.torch_model import TorchSession

DEFAULT_RECORDS = 2048
BATCH_SIZES = (32, 256)
"""Records per call: the served request size, and a batch big enough to fill a GPU."""
ROUNDS = 3
MAX_AUC_LOSS = 0.005
"""Largest ROC-AUC loss against the PyTorch CPU reference a GPU form may have (fp16)."""
SERVED_CONCURRENCY = (1, 4, 16)
SERVED_BATCH = 32
DEVICE = ("--device", "cuda")
"""What ``ubm-build repository`` is given for the served rows."""
PARITY_BATCH = 256
PACK_LIMIT_BYTES = 50 << 20
EVALUATION_KEYS = ("test_probabilities", "test_labels", "test_features")
"""What the parity gates read of ``evaluation.npz``."""
WEIGHTS_NOTE = "encoder weights loaded from the packed fp16 safetensors (fp32 rows upcast them)"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Form:
    """One way of running the encoder: a row-name stem and how to open its session."""

    name: str
    description: str
    open: Callable[[], Session]


@dataclass(frozen=True)
class Parity:
    """A form's probabilities over the test window against the CPU reference."""

    form: str
    records: int
    max_abs_diff: float
    roc_auc: float
    reference_roc_auc: float
    roc_auc_loss: float
    passed: bool


class Bench:
    """The model's reader and head, and the device the rows run on."""

    def __init__(self, model_dir: Path, device: str) -> None:
        spec = ModelSpec(**json.loads((model_dir / "ubm_model.json").read_text()))
        self.head = Head(
            spec.hidden_size,
            len(spec.feature_names),
            min(spec.text_components, spec.hidden_size),
        )
        self.head.load_state_dict(torch.load(model_dir / "head.pt", weights_only=True))
        self.head.eval()
        self.reader: RecordReader = load_reader(model_dir)
        self.snapshot_words = spec.snapshot_words
        self.device = device

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def probabilities(self, embedding: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The head's probabilities (CPU, as served)."""
        out = self.head(torch.from_numpy(embedding), torch.from_numpy(features))
        return out.squeeze(-1).numpy()


def embed(session: Session, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
    return session.run([contract.EMBEDDING], feeds)[0]


def full_row(bench: Bench, form: Form, session: Session, batches: Sequence[Batch]) -> Row:
    """Preprocessing, encoder and head per batch, as the server does."""

    def score(batch: Batch) -> np.ndarray:
        ids, mask, features, _ = bench.reader([record.events for record in batch])
        return bench.probabilities(embed(session, ids, mask), features)

    latencies, seconds = time_calls(batches, score, bench.synchronize)
    name = f"{form.name}_b{len(batches[0])}"
    description = f"{form.description}; text, features, tokens and head per batch"
    return summarise_batches(name, description, "batch", batches, latencies, seconds)


def encoder_row(
    bench: Bench, form: Form, session: Session, tokens: Sequence[tuple[np.ndarray, np.ndarray]]
) -> Row:
    """The encoder alone on pre-tokenized batches."""
    latencies, seconds = time_calls(tokens, lambda t: embed(session, *t), bench.synchronize)
    name = f"encoder_only_{form.name.removeprefix('pytorch_')}_b{len(tokens[0][0])}"
    description = f"{form.description}; encoder only, pre-tokenized (no text, features, head)"
    ids_batches = [ids for ids, _ in tokens]
    return summarise_batches(name, description, "batch", ids_batches, latencies, seconds)


def test_window(bench: Bench, csv: Path, model_dir: Path, limit: int | None):
    """(ids, mask, features, reference probabilities, labels) of the test window in training's
    order; features are the point-in-time ones training computed (``evaluation.npz``)."""
    evaluation = np.load(model_dir / "evaluation.npz")
    examples = data.examples_by_window(csv)["test"]
    if bench.snapshot_words:  # the words depend on each day's snapshot
        from ubm_build.data.point_in_time import DailySnapshots, EventLog, point_in_time_inputs

        inputs = point_in_time_inputs(bench.reader, examples, DailySnapshots(EventLog.read(csv)))
    else:
        inputs = bench.reader([ex.events for ex in examples])
    n = len(examples) if limit is None else min(limit, len(examples))
    return (
        inputs.ids[:n],
        inputs.mask[:n],
        evaluation["test_features"][:n],
        evaluation["test_probabilities"][:n],
        evaluation["test_labels"][:n],
    )


def parity(bench: Bench, form: Form, session: Session, window) -> Parity:
    """`form`'s probabilities of `window`, in batches of similar lengths, against the
    reference."""
    ids, mask, features, reference, labels = window
    lengths = mask.sum(1)
    order = np.argsort(lengths, kind="stable")
    embedding = None
    for start in range(0, len(order), PARITY_BATCH):
        rows = order[start : start + PARITY_BATCH]
        width = int(lengths[rows].max())
        part = embed(session, ids[rows, :width], mask[rows, :width])
        if embedding is None:
            embedding = np.empty((len(order), part.shape[1]), dtype=np.float32)
        embedding[rows] = part
    probabilities = bench.probabilities(embedding, features)
    auc, reference_auc = roc_auc_score(labels, probabilities), roc_auc_score(labels, reference)
    return Parity(
        form=form.name,
        records=len(labels),
        max_abs_diff=float(np.abs(probabilities - reference).max()),
        roc_auc=float(auc),
        reference_roc_auc=float(reference_auc),
        roc_auc_loss=float(reference_auc - auc),
        passed=bool(reference_auc - auc <= MAX_AUC_LOSS),
    )


def pytorch_forms(bert_dir: Path, device: str) -> list[Form]:
    return [
        Form(
            f"pytorch_{precision}_{device.split(':')[0]}",
            f"PyTorch {precision} on {device} (torch_model.TorchSession), {WEIGHTS_NOTE}",
            lambda p=precision: TorchSession(bert_dir, device, p),
        )
        for precision in ("fp32", "fp16")
    ]


def ort_cuda_reason() -> str | None:
    """None if ONNX Runtime has its CUDA provider here, else why not."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime does not import: {e}"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider ({providers})"
    return None


def tensorrt_reason() -> str | None:
    """None if TensorRT and `ubm_build.export.tensorrt` are usable here, else why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed here (no tensorrt module)"
    try:
        from ubm_build.export import tensorrt
    except Exception as e:
        return f"ubm_build.export.tensorrt does not import: {type(e).__name__}: {e}"
    return tensorrt.unavailable_reason()


def engine_forms(
    model_dir: Path, workdir: Path, device: str, max_length: int, skipped: dict, log: Log
) -> list[Form]:
    """ONNX Runtime CUDA and TensorRT forms where they run here; reasons in `skipped`."""
    if not device.startswith("cuda"):
        skipped["onnxruntime_cuda"] = skipped["tensorrt"] = "dry run on the CPU"
        return []
    reasons = {"onnxruntime_cuda": ort_cuda_reason(), "tensorrt": tensorrt_reason()}
    skipped.update({name: reason for name, reason in reasons.items() if reason})
    if all(reasons.values()):
        return []
    from ubm_build import export  # ONNX Runtime's tools load only when a GPU form needs them

    try:
        onnx = export.export_encoder(BehaviourModel.load(model_dir), workdir / "encoder.onnx")
    except Exception as e:
        skipped.update({name: f"ONNX export failed: {e}" for name in reasons})
        return []
    forms = []
    if reasons["onnxruntime_cuda"] is None:
        import onnxruntime as ort

        def ort_session() -> Session:
            providers = [("CUDAExecutionProvider", {"device_id": device_index(device)})]
            return ort.InferenceSession(str(onnx), providers=providers)

        forms.append(Form("onnxruntime_cuda", "ONNX Runtime CUDA provider, fp32", ort_session))
    if reasons["tensorrt"] is None:
        from ubm_build.export import tensorrt

        def trt_session() -> Session:
            plan = workdir / "encoder.plan"
            if not plan.exists():
                started = time.perf_counter()
                tensorrt.build_plan(onnx, plan, tensorrt.PlanSettings(max_length=max_length))
                log(f"TensorRT plan built in {time.perf_counter() - started:.0f} s")
            return tensorrt.TensorRTSession(plan)

        forms.append(
            Form("tensorrt_fp16", "TensorRT plan (ubm_build.export.tensorrt)", trt_session)
        )
    return forms


def device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def served_rows(model_dir: Path, records: Sequence[Record], device: str, log: Log):
    """(rows, None) through a tritonserver on a ``--device cuda`` repository, or ([], why not)."""
    if not device.startswith("cuda"):
        return [], "dry run on the CPU"
    if importlib.util.find_spec("pytriton") is None:
        return [], "no tritonserver here (nvidia-pytriton is not installed)"
    try:
        from ubm_build.bench.served import served_row
        from ubm_build.serving import server
    except Exception as e:
        return [], f"no tritonserver here ({type(e).__name__}: {e})"
    cli = [sys.executable, "-c", "from ubm_build.cli import main; main()", "repository"]
    helped = subprocess.run([*cli, "--help"], capture_output=True, text=True)
    if "--device" not in helped.stdout:
        return [], "ubm-build repository has no --device option yet"
    with tempfile.TemporaryDirectory() as tmp:
        repository_dir = Path(tmp) / "repository"
        built = subprocess.run(
            [*cli, "--model-dir", str(model_dir), "--repository", str(repository_dir), *DEVICE],
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            last = (built.stderr.strip() or built.stdout.strip() or "?").splitlines()[-1]
            return [], f"ubm-build repository --device cuda failed: {last}"
        batches = batches_of(records, SERVED_BATCH)
        ports = server.Ports.free()
        rows = []
        with server.TritonServer(repository_dir, workdir=Path(tmp) / "run", ports=ports) as triton:
            for concurrency in SERVED_CONCURRENCY:
                row = served_row(triton.grpc_url, batches, concurrency, triton.metrics_url)
                row = replace_name(row, f"served_c{concurrency}_b{SERVED_BATCH}")
                log(describe(row))
                rows.append(row)
        return rows, None


def replace_name(row: Row, name: str) -> Row:
    return Row(**{**row.to_dict(), "name": name})


def environment(device: str) -> dict:
    """The GPU and the versions the rows ran on."""
    import tokenizers
    import transformers

    info = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "usable_cores": report.usable_cores(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device_index(device))
    try:
        import onnxruntime as ort

        info["onnxruntime"] = f"{ort.__version__} {ort.get_available_providers()}"
    except ImportError:
        info["onnxruntime"] = None
    return info


def run_bench(
    model_dir: Path,
    csv: Path,
    n_records: int,
    batch_sizes: Sequence[int],
    device: str,
    rounds: int,
    parity_records: int | None,
    log: Log,
) -> dict:
    """Every row and gate of the GPU benchmark, as the results file holds them."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.ClickException(f"--device {device}: PyTorch sees no CUDA GPU here")
    bench = Bench(model_dir, device)
    records = sample_records(n_records, csv)
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as workdir:
        forms = pytorch_forms(model_dir / "encoder", device)
        forms += engine_forms(
            model_dir, Path(workdir), device, bench.reader.max_length, skipped, log
        )
        sessions: dict[str, Session] = {}
        for form in list(forms):
            try:
                sessions[form.name] = form.open()
            except Exception as e:
                skipped[form.name] = f"opening failed: {type(e).__name__}: {e}"
                forms.remove(form)
        window = test_window(bench, csv, model_dir, parity_records)
        gates = [asdict(parity(bench, form, sessions[form.name], window)) for form in forms]
        for gate in gates:
            log(
                f"parity {gate['form']}: max |p - ref| {gate['max_abs_diff']:.2e}, ROC-AUC"
                f" {gate['roc_auc']:.4f} (loss {gate['roc_auc_loss']:+.4f}):"
                f" {'pass' if gate['passed'] else 'FAIL'}"
            )
        measures: list[Callable[[], Row]] = []
        for size in batch_sizes:
            batches = batches_of(records, size)
            for form in forms:
                session = sessions[form.name]
                measures.append(lambda f=form, s=session, b=batches: full_row(bench, f, s, b))
            tokens = [bench.reader([r.events for r in batch])[:2] for batch in batches]
            fp16 = next((f for f in forms if f.name.startswith("pytorch_fp16")), None)
            if fp16 is not None:
                session = sessions[fp16.name]
                measures.append(lambda f=fp16, s=session, t=tokens: encoder_row(bench, f, s, t))
        rows = list(in_rounds([[m] for m in measures], rounds, log).values())
        sessions.clear()
    served, reason = served_rows(model_dir, records, device, log)
    if reason:
        skipped["served"] = reason
        log(f"served rows skipped: {reason}")
    return {
        "created": report.created(),
        "machine": environment(device),
        "model_dir": paths.shown(model_dir),
        "weights": WEIGHTS_NOTE,
        "records": len(records),
        "batch_sizes": list(batch_sizes),
        "rounds": rounds,
        "max_length": bench.reader.max_length,
        "rows": [row.to_dict() for row in [*rows, *served]],
        "parity": {"max_roc_auc_loss": MAX_AUC_LOSS, "forms": gates},
        "skipped": skipped,
    }


def print_rows(result: dict) -> None:
    console = report.wide_console()
    machine = result["machine"]
    table = report.results_table(
        f"{result['records']} records on {machine.get('gpu', machine['device'])}"
    )
    table.add_column("row", no_wrap=True)
    for column in ("batch", "records/s", "p50 ms", "p99 ms", "per"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in result["rows"]:
        table.add_row(
            row["name"],
            str(row["records_per_call"]),
            f"{row['records_per_s']:.1f}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            row["latency_of"],
        )
    console.print(table)
    for name, reason in result["skipped"].items():
        console.print(f"skipped {name}: {reason}", highlight=False, soft_wrap=True)


def pack(model_dir: Path, out: Path) -> dict[str, int]:
    """What the GPU run reads of `model_dir`, small: fp16 encoder, compressed arrays. Returns
    each file's bytes."""
    from transformers import BertModel

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    bert = BertModel.from_pretrained(model_dir / "encoder", add_pooling_layer=False)
    bert.half().save_pretrained(out / "encoder")
    for name in ("head.pt", "ubm_model.json", "tokenizer.json"):
        shutil.copy2(model_dir / name, out / name)
    with np.load(model_dir / "snapshot.npz") as snapshot:
        np.savez_compressed(out / "snapshot.npz", **dict(snapshot))
    with np.load(model_dir / "evaluation.npz") as evaluation:
        kept = {key: evaluation[key] for key in EVALUATION_KEYS}
    np.savez_compressed(out / "evaluation.npz", **kept)
    sizes = {
        str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
    }
    if sum(sizes.values()) > PACK_LIMIT_BYTES:
        raise click.ClickException(f"{out} holds {sum(sizes.values())} bytes, over the limit")
    return sizes


@click.group(help=__doc__.split("\n\n")[0])
def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@main.command("run")
@options.model_dir()
@options.csv()
@click.option(
    "--records", "n_records", type=click.IntRange(1), default=DEFAULT_RECORDS, show_default=True
)
@click.option(
    "--batch-size",
    "batch_sizes",
    type=click.IntRange(1),
    multiple=True,
    default=BATCH_SIZES,
    show_default=True,
    help="Repeat for several.",
)
@click.option("--device", default="cuda", show_default=True, help="cuda, cuda:N or cpu.")
@click.option("--rounds", type=click.IntRange(1), default=ROUNDS, show_default=True)
@click.option(
    "--parity-records",
    type=click.IntRange(1),
    default=None,
    help="Gate on the first N test records only (default: the whole window).",
)
@options.out_file(paths.RESULTS / "bench-gpu.json")
def run_command(
    model_dir: Path,
    csv: Path,
    n_records: int,
    batch_sizes: tuple[int, ...],
    device: str,
    rounds: int,
    parity_records: int | None,
    out: Path,
) -> None:
    """Measure the GPU rows and gates; write them to --out."""
    log = report.console_log(report.wide_console(stderr=True))
    result = run_bench(
        model_dir,
        csv,
        n_records,
        batch_sizes,
        device,
        rounds,
        parity_records,
        log,
    )
    report.write(result, out)
    print_rows(result)
    failed = [gate["form"] for gate in result["parity"]["forms"] if not gate["passed"]]
    click.echo(f"wrote {out}" + (f"; parity FAILED: {', '.join(failed)}" if failed else ""))


@main.command("pack")
@options.model_dir()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=paths.PROJECT_ROOT / ".gpu" / "model",
    show_default=True,
)
def pack_command(model_dir: Path, out: Path) -> None:
    """Write the GPU machine's copy of the model (fp16 encoder) to --out."""
    sizes = pack(model_dir, out)
    for name, size in sizes.items():
        click.echo(f"{size / 2**20:8.2f} MB  {name}")
    click.echo(f"{sum(sizes.values()) / 2**20:8.2f} MB  in {out}")


if __name__ == "__main__":
    main()
