"""Video datasets, video I/O and the latent cache.

    dataset = open_dataset("ucf101:/data/UCF-101", resolution=256, frames=16)   # or sky:, videos:, frames:, synthetic
    loader = make_loader(dataset, batch_size=8, seed=0, infinite=True)          # DDP shards from the process group
    cache = LatentDataset("latents/ucf101", autoencoder_id=file_sha256(ckpt))   # after `pvdm encode`

PyAV and Pillow are imported only when a file is read or written.
"""

from pvdm_fast.data.clips import ClipConfig
from pvdm_fast.data.dataset import ClipDataset, open_dataset
from pvdm_fast.data.latents import LatentDataset, encode_dataset, file_sha256
from pvdm_fast.data.loader import ShardedSampler, make_loader
from pvdm_fast.data.specs import DataSpec, parse_spec
from pvdm_fast.data.video_io import VideoDecodeError, read_frames, write_video

__all__ = ["ClipConfig", "ClipDataset", "DataSpec", "LatentDataset", "ShardedSampler", "VideoDecodeError",
           "encode_dataset", "file_sha256", "make_loader", "open_dataset", "parse_spec", "read_frames",
           "write_video"]
