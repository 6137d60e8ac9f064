"""Input layers: they read data files and start the forward pass.

- kRecordInput / kCSVInput (v0.2+): read `batchsize` records from a store
  (`store_conf`) and parse them into `data` (float32, [batchsize] + shape)
  and `aux_data` (int32 labels, [batchsize]; None when the flag has kDeploy),
  then standardise: subtract the mean, divide by the std.
- kShardData (v0.1): reads `Record` protos; its `data` is the list of their
  `RecordProto`s, parsed by the layers after it: kMnist, kLabel, kRGBImage.
- kImagePreprocess: crops, mirrors and scales the 4-D data of its source.
- kLMDBData is refused with a message saying what to do instead.

Reading, prefetching and exact resume are in `input_reader.py`; the
v0.1 layers (kShardData and its parsers) in `v01_input_layer.py`.

These layers have no gradient: `compute_gradient` is a no-op.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from conf import common_pb2, job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.conf_check import ConfProblem, positive, store_backend
from runtime.neuralnet.connection_layer import aux_of
from runtime.neuralnet.input_reader import (
    InputLayer,
    ReaderLayer,
    check_backend,
    no_srclayers,
    open_input_store,
    partition_batchsize,
)
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.record_parsing import crop_mirror_scale, cropped_shape, decode_records


class StoreInputLayer(ReaderLayer):
    """kRecordInput and kCSVInput: `store_conf` {backend, path, batchsize,
    shape, mean_file/mean_value, std_file/std_value, random_skip,
    prefetching}; data shape = [batchsize] + shape."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        if not proto.HasField("store_conf"):
            tname = job_pb2.LayerType.Name(proto.type)
            return [ConfProblem("type", f"a {tname} layer needs store_conf {{ backend: "
                                '"kvfile" path: "..." batchsize: N shape: ... }')]
        c = proto.store_conf
        out: list[ConfProblem] = []
        if not c.path:
            out.append(ConfProblem("store_conf", "store_conf.path is required (the data file)"))
        if not c.batchsize:
            out.append(ConfProblem("store_conf", "store_conf.batchsize is required (instances "
                                   "per mini-batch)"))
        elif any(b < 1 for b in c.batchsize):
            out.append(ConfProblem("store_conf.batchsize", f"store_conf.batchsize must be > 0, "
                                   f"got {list(c.batchsize)}"))
        if not c.shape:
            out.append(ConfProblem("store_conf", "store_conf.shape is required (the shape of one "
                                   "instance, e.g. shape: 784 or shape: 3 shape: 32 shape: 32)"))
        elif any(d < 1 for d in c.shape):
            out.append(ConfProblem("store_conf.shape", f"store_conf.shape dims must be > 0, got "
                                   f"{list(c.shape)}"))
        if c.HasField("std_value") and c.std_value == 0:
            out.append(ConfProblem("store_conf.std_value", "store_conf.std_value must not be 0 "
                                   "(the data is divided by it)"))
        if c.random_skip < 0:
            out.append(ConfProblem("store_conf.random_skip",
                                   f"store_conf.random_skip must be >= 0, got {c.random_skip}"))
        if c.HasField("mean_file") and c.HasField("mean_value"):
            out.append(ConfProblem("store_conf.mean_value", "store_conf has both mean_file and "
                                   "mean_value; mean_file is used", "warning"))
        return out + store_backend(proto, submit)


    default_backend = "kvfile"

    def setup(self, srclayers: Sequence[Layer]) -> None:
        no_srclayers(self, srclayers)
        self.raise_conf_errors()
        conf = self.proto.store_conf
        if conf.encoded:
            raise LayerError("store_conf.encoded (compressed images) is not supported; "
                             "store the decoded pixels in the RecordProtos")
        self.path = conf.path
        self.backend = check_backend(conf.backend or self.default_backend)
        self.batchsize = partition_batchsize(self, conf.batchsize, "store_conf.batchsize")
        self.random_skip = conf.random_skip
        self.prefetching = conf.prefetching
        self.sample_shape = tuple(conf.shape)
        self.size = int(np.prod(self.sample_shape, dtype=np.int64))
        self.shape = (self.batchsize,) + self.sample_shape
        # per-pixel arrays (mean_file, std_file) or one value; None: not given
        self.mean: np.ndarray | np.float32 | None = None
        self.std: np.ndarray | np.float32 | None = None

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
        store = open_input_store(self.name, path, self.backend, field)
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


@layer_registry.register(job_pb2.kImagePreprocess)
class ImagePreprocessLayer(InputLayer):
    """`rgbimage_conf` {scale, cropsize, mirror} on the [B, C, H, W] data of
    its single source: crop (random offset in training, top-left otherwise),
    random horizontal mirror (training only), times scale. Labels pass through."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "rgbimage_conf", "cropsize", allow_zero=True)


    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        shape = tuple(srclayers[0].shape_for(self))
        if len(shape) != 4:
            raise LayerError(f"kImagePreprocess needs 4-D [batch, C, H, W] data; "
                             f"'{srclayers[0].name}' has shape {list(shape)}")
        self.shape = cropped_shape(shape, self.proto.rgbimage_conf.cropsize)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        conf = self.proto.rgbimage_conf
        x = np.asarray(srclayers[0].data_for(self), dtype=np.float32)
        self.data = crop_mirror_scale(x, conf.cropsize, conf.mirror, conf.scale,
                                      bool(flag & job_pb2.kTrain), self.rng)
        self.aux_data = aux_of(srclayers[0], self)
