"""The v0.1 input layers, as SINGA's deprecated ones: kShardData reads
`Record` protos and its `data` is the list of their `RecordProto`s, parsed
by the layers after it: kMnist, kLabel, kRGBImage. kLMDBData is refused
with a message saying what to do instead."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from conf import common_pb2, job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.conf_check import ConfProblem, conf_missing, positive
from runtime.neuralnet.input_reader import (
    InputLayer,
    ReaderLayer,
    no_srclayers,
    open_input_store,
    partition_batchsize,
)
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.record_parsing import crop_mirror_scale, cropped_shape, decode_records


def _reader_conf(proto: job_pb2.LayerProto, conf: str) -> list[ConfProblem]:
    """The conf of a v0.1 reader (sharddata_conf, lmdbdata_conf)."""
    return (conf_missing(proto, conf, 'path: "..." batchsize: N')
            or positive(proto, conf, "batchsize") + positive(proto, conf, "random_skip", allow_zero=True))


@layer_registry.register(job_pb2.kShardData)
class ShardDataLayer(ReaderLayer):
    """v0.1: reads `Record` protos from a kvfile (or a directory holding
    `shard.dat`), `sharddata_conf` {path, batchsize, random_skip}. Its `data`
    is the list of the batch's RecordProtos (read it with `data_for`),
    `aux_data` their labels; `sample` is the file's first record, read at
    setup so that the parser layers know the instance shape."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return _reader_conf(proto, "sharddata_conf")


    def setup(self, srclayers: Sequence[Layer]) -> None:
        no_srclayers(self, srclayers)
        conf = self.proto.sharddata_conf
        if not conf.path:
            raise LayerError("sharddata_conf.path is empty; give the shard (kvfile) to read")
        self.path, self.backend = conf.path, "kvfile"
        self.batchsize = partition_batchsize(self, [conf.batchsize] if conf.batchsize else [],
                                    "sharddata_conf.batchsize")
        self.random_skip = conf.random_skip
        try:
            store = open_input_store(self.name, self.path, self.backend, "sharddata_conf.path")
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
        for v, n in zip(values, numbers, strict=True):
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

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return _reader_conf(proto, "lmdbdata_conf")

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
        # a kShardData's data is not an array but its batch's records, a list
        return list(srclayers[0].data_for(self))

    def decode(self, srclayers: Sequence[Layer], size: int) -> np.ndarray:
        src = srclayers[0]
        return decode_records(self.records(srclayers), size,
                              lambda k: f"layer '{self.name}': instance {k} of the batch "
                                        f"from '{src.name}'")


@layer_registry.register(job_pb2.kMnist)
class MnistLayer(ParserLayer):
    """pixel -> x / norm_a - norm_b, as [batch, 1, s, s] (s x s images)."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        if proto.mnist_conf.norm_a == 0:
            return [ConfProblem("mnist_conf.norm_a", "mnist_conf.norm_a must not be 0 "
                                "(pixels are divided by it)", about="mnist_conf.norm_a")]
        return []


    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        assert self.sample is not None  # ParserLayer.setup raised otherwise
        shape = list(self.sample.shape)
        if len(shape) < 2 or shape[-1] != shape[-2]:
            raise LayerError(f"kMnist needs square images (record shape [.., s, s]); the first "
                             f"record of '{srclayers[0].name}' has shape {shape}")
        self.raise_conf_errors()
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

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "rgbimage_conf", "cropsize", allow_zero=True)


    def setup(self, srclayers: Sequence[Layer]) -> None:
        super().setup(srclayers)
        assert self.sample is not None  # ParserLayer.setup raised otherwise
        shape = tuple(self.sample.shape)
        if len(shape) != 3:
            raise LayerError(f"kRGBImage needs [C, H, W] records; the first record of "
                             f"'{srclayers[0].name}' has shape {list(shape)}")
        conf = self.proto.rgbimage_conf
        self.image_shape = shape
        self.shape = cropped_shape((self.batchsize,) + shape, conf.cropsize)
        self.mean: np.ndarray | None = None

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
            store = open_input_store(self.name, path, "kvfile", "rgbimage_conf.meanfile")
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

