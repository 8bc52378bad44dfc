"""The runner's one-copy upload of a step's metadata."""
import numpy as np
import pytest
import torch

from fair_lora.engine.host_upload import HostUpload


def test_cpu_upload_is_the_host_array_itself():
    host = np.arange(10, dtype=np.int64)
    out = HostUpload(torch.device("cpu"))(host)
    assert out.dtype == torch.int64 and out.tolist() == list(range(10))
    assert out.data_ptr() == host.ctypes.data  # no copy on the CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_uploads_in_sequence_each_arrive_whole():
    """Successive steps reuse one pinned staging buffer (growing it when needed); each upload must arrive
    intact even though the copies are asynchronous."""
    upload = HostUpload(torch.device("cuda"))
    outs = [upload(np.full(n, n, dtype=np.int64)) for n in (5, 3, 5000, 7, 100_000)]
    torch.cuda.synchronize()
    assert [o.unique().tolist() for o in outs] == [[5], [3], [5000], [7], [100_000]]
    assert [len(o) for o in outs] == [5, 3, 5000, 7, 100_000] and all(o.is_cuda for o in outs)
