"""The reading machinery of the input layers, as SINGA's readers/stores: a
`RecordReader` over a store (`runtime.io.store`), and `ReaderLayer`, the
base of the layers that read batches of records from a file.

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

Input layers have no gradient: `InputLayer.compute_gradient` is a no-op.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

from conf import job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.layer import Layer, kOneToMany


def open_input_store(layer: str, path: str, backend: str, what: str = "store_conf.path"):
    """`path` opened for reading with `backend`; a failure is a UserError naming
    the layer and the conf field `what`."""
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
        self.store = open_input_store(layer, path, backend)
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


def check_backend(backend: str) -> str:
    from runtime.io.store import store_registry

    if backend not in store_registry:
        raise LayerError(f"store_conf.backend {backend!r} is not supported; known: "
                         + ", ".join(store_registry.known()))
    return backend


def no_srclayers(layer: Layer, srclayers: Sequence[Layer]) -> None:
    if srclayers:
        raise LayerError(f"an input layer reads its data from a file and takes no "
                         f"srclayers, got {', '.join(s.name for s in srclayers)}")


def partition_batchsize(layer: Layer, sizes: Sequence[int], field: str) -> int:
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

    def _open_reader(self) -> RecordReader:
        """The reader `_start` opened: compute_feature starts it before any batch is read."""
        assert self._reader is not None, f"layer '{self.name}': the reader is not open"
        return self._reader

    def _next_batch(self, deploy: bool):
        values, numbers = self._open_reader().read_n(self.batchsize)
        data, labels = self.parse(values, numbers, deploy)
        self._open_reader().skip(self._interleave()[1])
        return data, labels, self._open_reader().pos

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
        except BaseException as e:  # noqa: BLE001 - handed to the net's thread, raised there
            self._put(e)

    def _take(self):
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    self._thread = None
                    raise RuntimeError(f"layer '{self.name}': the prefetching thread died") from None
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
        self._open_reader().seek(pos)

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

