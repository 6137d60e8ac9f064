"""Input layers: they read data files and start the forward pass.

- kRecordInput / kCSVInput (v0.2+): read `batchsize` records from a store
  (`store_conf`) and parse them into `data` (float32, [batchsize] + shape)
  and `aux_data` (int32 labels, [batchsize]; None when the flag has kDeploy),
  then standardise: subtract the mean, divide by the std.
- kShardData (v0.1): reads `Record` protos; its `data` is the list of their
  `RecordProto`s, parsed by the layers after it: kMnist, kLabel, kRGBImage.
- kImagePreprocess: crops, mirrors and scales the 4-D data of its source.
- kLMDBData is refused with a message saying what to do instead.

Reading, as in SINGA: records are read in file order; at the end of the
file the reader wraps to the first record and goes on filling the batch. On
the first read `random_skip` draws n ~ U[0, random_skip] from `self.rng` and
skips n records, so that workers start at different offsets.

Prefetching (`store_conf.prefetching`): a daemon thread reads and parses the
next batch while the net computes, handing batches over through a queue of
size 1. The thread never touches `self.rng` (the skip is drawn before it
starts), so a prefetching layer delivers exactly the batches a plain one
does.

Exact resume: `state()` is {"position": records read up to the end of the
last batch delivered to the net, counted from the start of the file (so
modulo its size), "skipped": whether the first read (and its skip) has
happened}. A batch read ahead by the prefetcher but not yet delivered does
not count. `load_state(state)` makes the next batch the one that would have
followed. `close()` stops the prefetcher and closes the store, keeping the
position, so a later `compute_feature` goes on where it stopped.

These layers have no gradient: `compute_gradient` is a no-op.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from conf import common_pb2, job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.connection_layer import aux_of
from runtime.neuralnet.layer import Layer, kOneToMany, layer_registry


# ------------------------------------------------------------ helpers ----
def _open(layer: str, path: str, backend: str, what: str = "store_conf.path"):
    from runtime.io.store import open_store  # the io package registers the backends

    try:
        return open_store(path, backend=backend, mode="r")
    except UserError as e:
        raise UserError(f"layer '{layer}': {e} ({what})") from None
    except OSError as e:
        raise UserError(f"layer '{layer}': cannot open {backend} store {path!r} ({what}): "
                        f"{e.strerror or e}") from None


class RecordReader:
    """Reads values from a store in file order, wrapping at the end.

    `pos` is the number of records read since the start of the file; the
    record numbers it returns count from 1 (the line number of a textfile).
    """

    def __init__(self, layer: str, path: str, backend: str):
        self.layer, self.path, self.backend = layer, path, backend
        self.store = _open(layer, path, backend)
        self.pos = 0

    def read(self) -> bytes:
        rec = self.store.read()
        if rec is None:
            self.store.seek_to_first()
            self.pos = 0
            rec = self.store.read()
            if rec is None:
                raise UserError(f"layer '{self.layer}': {self.backend} store {self.path!r} "
                                "has no records")
        self.pos += 1
        return rec[1]

    def read_n(self, n: int) -> tuple[list[bytes], list[int]]:
        values, numbers = [], []
        for _ in range(n):
            values.append(self.read())
            numbers.append(self.pos)
        return values, numbers

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.read()

    def seek(self, pos: int) -> None:
        self.store.seek_to_first()
        self.pos = 0
        self.skip(pos)

    def close(self) -> None:
        self.store.close()


def decode_records(recs: Sequence[common_pb2.RecordProto], size: int,
                   where: Callable[[int], str]) -> np.ndarray:
    """[n, size] float32 from RecordProtos: `data` when present, else the
    `pixel` bytes as uint8. `where(k)` names record k in error messages."""
    n = len(recs)
    ndata = np.fromiter((len(r.data) for r in recs), dtype=np.int64, count=n)
    use_data = ndata > 0
    found = np.where(use_data, ndata,
                     np.fromiter((len(r.pixel) for r in recs), dtype=np.int64, count=n))
    if (found != size).any():
        k = int(np.argmax(found != size))
        kind = "data floats" if use_data[k] else "pixel bytes"
        raise UserError(f"{where(k)} has {found[k]} {kind}, expected {size}")
    out = np.empty((n, size), dtype=np.float32)
    if use_data.all():
        out[...] = np.array([r.data for r in recs], dtype=np.float32)
    elif not use_data.any():
        out[...] = np.frombuffer(b"".join(r.pixel for r in recs), dtype=np.uint8).reshape(n, size)
    else:
        for k, r in enumerate(recs):  # a mixed file: rare, not worth vectorising
            out[k] = r.data if use_data[k] else np.frombuffer(r.pixel, dtype=np.uint8)
    return out


def crop_mirror_scale(x: np.ndarray, cropsize: int, mirror: bool, scale: float,
                      train: bool, rng: np.random.Generator) -> np.ndarray:
    """Crop [B,C,H,W] images to cropsize x cropsize (a random offset per image
    in training, the top-left corner otherwise), flip each horizontally with
    probability 1/2 if `mirror` (training only), then multiply by `scale`."""
    b, c, h, w = x.shape
    ch, cw = (cropsize, cropsize) if cropsize else (h, w)
    random_crop = train and cropsize and (h > ch or w > cw)
    flip = rng.random(b) < 0.5 if (mirror and train) else None
    if not random_crop and flip is None:
        out = x[:, :, :ch, :cw]
    else:
        h0 = rng.integers(0, h - ch + 1, size=b) if random_crop else np.zeros(b, np.int64)
        w0 = rng.integers(0, w - cw + 1, size=b) if random_crop else np.zeros(b, np.int64)
        rows = h0[:, None] + np.arange(ch)
        cols = w0[:, None] + np.arange(cw)
        if flip is not None:
            cols = np.where(flip[:, None], cols[:, ::-1], cols)
        out = x[np.arange(b)[:, None, None, None], np.arange(c)[None, :, None, None],
                rows[:, None, :, None], cols[:, None, None, :]]
    if scale != 1:
        out = out * np.float32(scale)
    return np.ascontiguousarray(out, dtype=np.float32)


def _check_backend(backend: str) -> str:
    from runtime.io.store import store_registry

    if backend not in store_registry:
        raise LayerError(f"store_conf.backend {backend!r} is not supported; known: "
                         + ", ".join(store_registry.known()))
    return backend


def _no_srclayers(layer: Layer, srclayers: Sequence[Layer]) -> None:
    if srclayers:
        raise LayerError(f"an input layer reads its data from a file and takes no "
                         f"srclayers, got {', '.join(s.name for s in srclayers)}")


# --------------------------------------------------- reading machinery ----
class InputLayer(Layer):
    """Base of the layers that start the forward pass: no gradient, and
    every consumer reads the same data (no split layer after them)."""

    is_input = True
    dst_layer_connection = kOneToMany

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        """Input layers have no gradient."""


class ReaderLayer(InputLayer):
    """Reads batches of records from a store, with wrap-around, random skip,
    optional prefetching and an exact position (see the module docstring).

    A subclass's `setup` sets `path`, `backend`, `batchsize`, `random_skip`
    and `prefetching`, and it implements `parse(values, numbers, deploy) ->
    (data, labels)`; `prepare()` runs once before the first read (in the
    caller's thread), e.g. to load the mean.
    """

    path = ""
    backend = "kvfile"
    batchsize = 0
    random_skip = 0
    prefetching = False

    def __init__(self, proto: job_pb2.LayerProto):
        super().__init__(proto)
        self._reader: RecordReader | None = None
        self._position = 0
        self._skipped = False
        self._pending: dict | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._deploy = False

    # -- subclass hooks --
    def parse(self, values: list[bytes], numbers: list[int], deploy: bool):
        raise NotImplementedError

    def prepare(self) -> None:
        pass

    def where(self, number: int) -> str:
        return f"layer '{self.name}': record {number} of {self.path!r}"

    # -- forward --
    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        deploy = bool(flag & job_pb2.kDeploy)
        if self._reader is None:
            self._start()
        if self.prefetching:
            if self._thread is not None and deploy != self._deploy:
                self._restart_at(self._position)  # parse the rest the new way
            if self._thread is None:
                self._start_prefetch(deploy)
            data, labels, pos = self._take()
        else:
            data, labels, pos = self._next_batch(deploy)
        self.data = data
        self.aux_data = None if deploy else labels
        self._position = pos

    def _start(self) -> None:
        reader = RecordReader(self.name, self.path, self.backend)
        try:
            self.prepare()
        except BaseException:
            reader.close()
            raise
        self._reader = reader
        pending, self._pending = self._pending, None
        if pending is not None and pending["skipped"]:
            self._reader.seek(int(pending["position"]))
        else:
            if self.random_skip > 0:
                self._reader.skip(int(self.rng.integers(0, self.random_skip, endpoint=True)))
            self._reader.skip(self._interleave()[0])
        self._skipped = True
        self._position = self._reader.pos

    def _interleave(self) -> tuple[int, int]:
        """(records to skip first, records to skip after each batch) for a
        batch partition: partition p of n reads records p*b .. p*b+b-1 of
        every n*b, so n workers together read the records one worker with
        batch n*b would (the same data order)."""
        n = self.proto.num_partitions
        if n <= 1 or self.proto.partition_dim != 0 or len(self.proto.store_conf.batchsize) > 1:
            return 0, 0
        return self.proto.partition_id * self.batchsize, (n - 1) * self.batchsize

    def _next_batch(self, deploy: bool):
        values, numbers = self._reader.read_n(self.batchsize)
        data, labels = self.parse(values, numbers, deploy)
        self._reader.skip(self._interleave()[1])
        return data, labels, self._reader.pos

    # -- prefetching --
    def _start_prefetch(self, deploy: bool) -> None:
        self._deploy = deploy
        self._stop.clear()
        self._queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._produce, args=(deploy,), daemon=True,
                                        name=f"prefetch-{self.name}")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _produce(self, deploy: bool) -> None:
        try:
            while not self._stop.is_set():
                if not self._put(self._next_batch(deploy)):
                    return
        except BaseException as e:  # handed to the net's thread, raised there
            self._put(e)

    def _take(self):
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    self._thread = None
                    raise RuntimeError(f"layer '{self.name}': the prefetching thread died")
        if isinstance(item, BaseException):
            self._stop_prefetch()
            raise item
        return item

    def _stop_prefetch(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # make room so a blocked put returns
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread = None

    def _restart_at(self, pos: int) -> None:
        self._stop_prefetch()
        self._reader.seek(pos)

    # -- state --
    def state(self) -> dict:
        if self._pending is not None:
            return dict(self._pending)
        return {"position": int(self._position), "skipped": bool(self._skipped)}

    def load_state(self, state: dict) -> None:
        self.close()
        self._pending = {"position": int(state.get("position", 0)),
                         "skipped": bool(state.get("skipped", False))}
        self._position, self._skipped = 0, False

    def close(self) -> None:
        if self._reader is None:
            return
        self._pending = self.state()
        self._stop_prefetch()
        self._reader.close()
        self._reader = None


def _batchsize(layer: Layer, sizes: Sequence[int], field: str) -> int:
    """The batch of this partition, as SINGA's StoreInputLayer::Setup."""
    proto = layer.proto
    if not sizes:
        raise LayerError(f"{field} is required (the number of instances per batch)")
    if proto.partition_dim == 0 and len(sizes) > 1:
        if proto.partition_id >= len(sizes):
            raise LayerError(f"{field} lists {len(sizes)} sizes but this is partition "
                             f"{proto.partition_id}")
        b = sizes[proto.partition_id]
    elif proto.partition_dim == 0:
        b = sizes[0] // max(proto.num_partitions, 1)
    else:
        b = sizes[0]
    if b < 1:
        extra = (f" / {proto.num_partitions} partitions"
                 if proto.partition_dim == 0 and len(sizes) == 1 and proto.num_partitions > 1 else "")
        raise LayerError(f"{field} gives a batch of {b} ({list(sizes)}{extra}); expected >= 1")
    return int(b)


class StoreInputLayer(ReaderLayer):
    """kRecordInput and kCSVInput: `store_conf` {backend, path, batchsize,
    shape, mean_file/mean_value, std_file/std_value, random_skip,
    prefetching}; data shape = [batchsize] + shape."""

    default_backend = "kvfile"

    def setup(self, srclayers: Sequence[Layer]) -> None:
        _no_srclayers(self, srclayers)
        conf = self.proto.store_conf
        if not conf.path:
            raise LayerError("store_conf.path is empty; give the data file to read")
        if not conf.shape or min(conf.shape) < 1:
            raise LayerError(f"store_conf.shape must list the positive dims of one instance "
                             f"(e.g. shape: 784), got {list(conf.shape)}")
        if conf.HasField("std_value") and conf.std_value == 0:
            raise LayerError("store_conf.std_value is 0; data cannot be divided by it")
        if conf.random_skip < 0:
            raise LayerError(f"store_conf.random_skip is {conf.random_skip}, expected >= 0")
        if conf.encoded:
            raise LayerError("store_conf.encoded (compressed images) is not supported; "
                             "store the decoded pixels in the RecordProtos")
        self.path = conf.path
        self.backend = _check_backend(conf.backend or self.default_backend)
        self.batchsize = _batchsize(self, conf.batchsize, "store_conf.batchsize")
        self.random_skip = conf.random_skip
        self.prefetching = conf.prefetching
        self.sample_shape = tuple(conf.shape)
        self.size = int(np.prod(self.sample_shape, dtype=np.int64))
        self.shape = (self.batchsize,) + self.sample_shape
        self.mean = self.std = None

    def prepare(self) -> None:
        conf = self.proto.store_conf
        if conf.mean_file:
            self.mean = self._load_stat(conf.mean_file, "store_conf.mean_file")
        elif conf.HasField("mean_value"):
            self.mean = np.float32(conf.mean_value)
        if conf.std_file:
            self.std = self._load_stat(conf.std_file, "store_conf.std_file")
            if (self.std == 0).any():
                raise UserError(f"layer '{self.name}': store_conf.std_file {conf.std_file!r} "
                                f"holds {int((self.std == 0).sum())} zero(s); cannot divide by 0")
        elif conf.HasField("std_value"):
            self.std = np.float32(conf.std_value)

    def _load_stat(self, path: str, field: str) -> np.ndarray:
        store = _open(self.name, path, self.backend, field)
        try:
            rec = store.read()
        finally:
            store.close()
        if rec is None:
            raise UserError(f"layer '{self.name}': {field} {path!r} has no records")
        return self.parse_stat(rec[1], f"layer '{self.name}': the first record of {field} {path!r}")

    def parse_stat(self, value: bytes, where: str) -> np.ndarray:
        raise NotImplementedError

    def standardise(self, data: np.ndarray) -> np.ndarray:
        if self.mean is not None:
            data -= self.mean
        if self.std is not None:
            data /= self.std
        return data


@layer_registry.register(job_pb2.kRecordInput)
class RecordInputLayer(StoreInputLayer):
    """Values are serialised RecordProtos: `data` floats if present, else
    `pixel` bytes (uint8). The mean/std file's first record holds `data`."""

    def _records(self, values: list[bytes], where) -> list[common_pb2.RecordProto]:
        recs = []
        for k, v in enumerate(values):
            try:
                recs.append(common_pb2.RecordProto.FromString(v))
            except DecodeError:
                raise UserError(f"{where(k)} is not a RecordProto") from None
        return recs

    def parse(self, values, numbers, deploy):
        where = lambda k: self.where(numbers[k])  # noqa: E731
        recs = self._records(values, where)
        data = decode_records(recs, self.size, where)
        labels = np.fromiter((r.label for r in recs), dtype=np.int32, count=len(recs))
        return self.standardise(data).reshape((len(recs),) + self.sample_shape), labels

    def parse_stat(self, value, where):
        (rec,) = self._records([value], lambda k: where)
        if len(rec.data) != self.size:
            raise UserError(f"{where} has {len(rec.data)} data floats, expected {self.size} "
                            f"(store_conf.shape {list(self.sample_shape)})")
        return np.asarray(rec.data, dtype=np.float32)


@layer_registry.register(job_pb2.kCSVInput)
class CSVInputLayer(StoreInputLayer):
    """Values are lines of `separator`-separated numbers: the int label first
    (if `has_label` and not kDeploy), then exactly prod(shape) floats."""

    default_backend = "textfile"

    def where(self, number: int) -> str:
        return f"layer '{self.name}': line {number} of {self.path!r}"

    def _fields(self, lines: list[str], nfields: int, where, what: str) -> np.ndarray:
        sep = self.proto.store_conf.separator
        for k, line in enumerate(lines):
            n = line.count(sep) + 1 if line.strip() else 0
            if n != nfields:
                raise UserError(f"{where(k)} has {n} fields, expected {nfields} ({what})")
        try:
            return np.array(sep.join(lines).split(sep), dtype=np.float32).reshape(len(lines), nfields)
        except ValueError:
            for k, line in enumerate(lines):  # find the bad line to name it
                for field in line.split(sep):
                    try:
                        float(field)
                    except ValueError:
                        raise UserError(f"{where(k)}: {field.strip()!r} is not a number") from None
            raise

    def _lines(self, values: list[bytes], where) -> list[str]:
        try:
            return [v.decode() for v in values]
        except UnicodeDecodeError:
            k = next(k for k, v in enumerate(values) if not _is_utf8(v))
            raise UserError(f"{where(k)} is not text (not UTF-8)") from None

    def parse(self, values, numbers, deploy):
        where = lambda k: self.where(numbers[k])  # noqa: E731
        with_label = self.proto.store_conf.has_label and not deploy
        what = (("a label and " if with_label else "")
                + f"{self.size} values for store_conf.shape {list(self.sample_shape)}")
        fields = self._fields(self._lines(values, where), self.size + with_label, where, what)
        labels = fields[:, 0].astype(np.int32) if with_label else None
        data = np.ascontiguousarray(fields[:, int(with_label):])
        return self.standardise(data).reshape((len(values),) + self.sample_shape), labels

    def parse_stat(self, value, where):
        lines = self._lines([value], lambda k: where)
        return self._fields(lines, self.size, lambda k: where,
                            f"store_conf.shape {list(self.sample_shape)}")[0]


def _is_utf8(v: bytes) -> bool:
    try:
        v.decode()
        return True
    except UnicodeDecodeError:
        return False


# ------------------------------------------------------- v0.1 layers ----
@layer_registry.register(job_pb2.kShardData)
class ShardDataLayer(ReaderLayer):
    """v0.1: reads `Record` protos from a kvfile (or a directory holding
    `shard.dat`), `sharddata_conf` {path, batchsize, random_skip}. Its `data`
    is the list of the batch's RecordProtos (read it with `data_for`),
    `aux_data` their labels; `sample` is the file's first record, read at
    setup so that the parser layers know the instance shape."""

    def setup(self, srclayers: Sequence[Layer]) -> None:
        _no_srclayers(self, srclayers)
        conf = self.proto.sharddata_conf
        if not conf.path:
            raise LayerError("sharddata_conf.path is empty; give the shard (kvfile) to read")
        self.path, self.backend = conf.path, "kvfile"
        self.batchsize = _batchsize(self, [conf.batchsize] if conf.batchsize else [],
                                    "sharddata_conf.batchsize")
        self.random_skip = conf.random_skip
        try:
            store = _open(self.name, self.path, self.backend, "sharddata_conf.path")
            try:
                first = store.read()
            finally:
                store.close()
        except UserError as e:
            raise LayerError(str(e)) from None
        if first is None:
            raise LayerError(f"shard {self.path!r} (sharddata_conf.path) has no records")
        self.sample = self._records([first[1]], [1])[0]
        self.shape = (self.batchsize,) + tuple(self.sample.shape)

    def _records(self, values, numbers) -> list[common_pb2.RecordProto]:
        recs = []
        for v, n in zip(values, numbers):
            try:
                recs.append(common_pb2.Record.FromString(v).image)
            except DecodeError:
                raise UserError(f"{self.where(n)} is not a Record") from None
        return recs

    def parse(self, values, numbers, deploy):
        recs = self._records(values, numbers)
        return recs, np.fromiter((r.label for r in recs), dtype=np.int32, count=len(recs))


@layer_registry.register(job_pb2.kLMDBData)
class LMDBDataLayer(InputLayer):
    def setup(self, srclayers: Sequence[Layer]) -> None:
        raise LayerError("kLMDBData: LMDB is not supported; convert the data to a kvfile "
                         "(RecordProto values) and read it with kRecordInput")

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        raise LayerError("kLMDBData: LMDB is not supported")


class ParserLayer(InputLayer):
    """v0.1 parsers: read the records of their single kShardData source."""

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        src = srclayers[0]
        self.sample = getattr(src, "sample", None)
        if self.sample is None:
            raise LayerError(f"a {job_pb2.LayerType.Name(self.proto.type)} layer parses the "
                             f"records of a kShardData layer, but its source '{src.name}' is a "
                             f"{job_pb2.LayerType.Name(src.proto.type)}")
        self.batchsize = src.shape_for(self)[0]

    def records(self, srclayers: Sequence[Layer]) -> list[common_pb2.RecordProto]:
        return srclayers[0].data_for(self)

    def decode(self, srclayers: Sequence[Layer], size: int) -> np.ndarray:
        src = srclayers[0]
        return decode_records(self.records(srclayers), size,
                              lambda k: f"layer '{self.name}': instance {k} of the batch "
                                        f"from '{src.name}'")


@layer_registry.register(job_pb2.kMnist)
class MnistLayer(ParserLayer):
    """pixel -> x / norm_a - norm_b, as [batch, 1, s, s] (s x s images)."""

    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        shape = list(self.sample.shape)
        if len(shape) < 2 or shape[-1] != shape[-2]:
            raise LayerError(f"kMnist needs square images (record shape [.., s, s]); the first "
                             f"record of '{srclayers[0].name}' has shape {shape}")
        if self.proto.mnist_conf.norm_a == 0:
            raise LayerError("mnist_conf.norm_a is 0; pixels cannot be divided by it")
        self.side = shape[-1]
        self.shape = (self.batchsize, 1, self.side, self.side)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        conf = self.proto.mnist_conf
        x = self.decode(srclayers, self.side * self.side)
        x /= np.float32(conf.norm_a)
        x -= np.float32(conf.norm_b)
        self.data = x.reshape(self.shape)


@layer_registry.register(job_pb2.kLabel)
class LabelLayer(ParserLayer):
    """The records' labels: `aux_data` (int32) and `data` (float32), [batch]."""

    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        self.shape = (self.batchsize,)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        recs = self.records(srclayers)
        self.aux_data = np.fromiter((r.label for r in recs), dtype=np.int32, count=len(recs))
        self.data = self.aux_data.astype(np.float32)


@layer_registry.register(job_pb2.kRGBImage)
class RGBImageLayer(ParserLayer):
    """[batch, C, H, W] images minus the mean (`rgbimage_conf.meanfile`: a
    serialised RecordProto, a kvfile whose first record is one, or a Caffe
    `.binaryproto`), cropped and mirrored as kImagePreprocess, times scale."""

    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        shape = tuple(self.sample.shape)
        if len(shape) != 3:
            raise LayerError(f"kRGBImage needs [C, H, W] records; the first record of "
                             f"'{srclayers[0].name}' has shape {list(shape)}")
        conf = self.proto.rgbimage_conf
        self.image_shape = shape
        self.shape = _cropped((self.batchsize,) + shape, conf.cropsize)
        self.mean = None

    def _load_mean(self) -> np.ndarray:
        path = self.proto.rgbimage_conf.meanfile
        size = int(np.prod(self.image_shape))
        values = None
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise UserError(f"layer '{self.name}': cannot read rgbimage_conf.meanfile "
                            f"{path!r}: {e.strerror or e}") from None
        try:
            if "binaryproto" in path:
                values = common_pb2.CaffeBlob.FromString(raw).data
            else:
                values = common_pb2.RecordProto.FromString(raw).data
        except DecodeError:
            pass
        if values is None or len(values) != size:
            store = _open(self.name, path, "kvfile", "rgbimage_conf.meanfile")
            try:
                rec = store.read()
                values = common_pb2.RecordProto.FromString(rec[1]).data if rec else []
            except (DecodeError, UserError):
                values = []
            finally:
                store.close()
        if len(values) != size:
            raise UserError(f"layer '{self.name}': rgbimage_conf.meanfile {path!r} holds "
                            f"{len(values)} mean values, expected {size} "
                            f"(image shape {list(self.image_shape)})")
        return np.asarray(values, dtype=np.float32).reshape(self.image_shape)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        conf = self.proto.rgbimage_conf
        if self.mean is None and conf.meanfile:
            self.mean = self._load_mean()
        x = self.decode(srclayers, int(np.prod(self.image_shape)))
        x = x.reshape((-1,) + self.image_shape)
        if self.mean is not None:
            x -= self.mean
        self.data = crop_mirror_scale(x, conf.cropsize, conf.mirror, conf.scale,
                                      bool(flag & job_pb2.kTrain), self.rng)


def _cropped(shape: tuple[int, ...], cropsize: int) -> tuple[int, ...]:
    b, c, h, w = shape
    if cropsize < 0 or cropsize > min(h, w):
        raise LayerError(f"rgbimage_conf.cropsize is {cropsize}, but the images are "
                         f"{h}x{w}; expected 0 (no crop) to {min(h, w)}")
    return (b, c, cropsize, cropsize) if cropsize else shape


@layer_registry.register(job_pb2.kImagePreprocess)
class ImagePreprocessLayer(InputLayer):
    """`rgbimage_conf` {scale, cropsize, mirror} on the [B, C, H, W] data of
    its single source: crop (random offset in training, top-left otherwise),
    random horizontal mirror (training only), times scale. Labels pass through."""

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        shape = tuple(srclayers[0].shape_for(self))
        if len(shape) != 4:
            raise LayerError(f"kImagePreprocess needs 4-D [batch, C, H, W] data; "
                             f"'{srclayers[0].name}' has shape {list(shape)}")
        self.shape = _cropped(shape, self.proto.rgbimage_conf.cropsize)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        conf = self.proto.rgbimage_conf
        x = np.asarray(srclayers[0].data_for(self), dtype=np.float32)
        self.data = crop_mirror_scale(x, conf.cropsize, conf.mirror, conf.scale,
                                      bool(flag & job_pb2.kTrain), self.rng)
        self.aux_data = aux_of(srclayers[0], self)
