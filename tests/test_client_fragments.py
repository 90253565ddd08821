"""The protocol client sends large uploads as fragmented websocket messages (a fragment at
a time, so the pure-Python masking in the hosts' vendored websockets never holds the GIL
for a whole upload); the daemon must get every byte."""

from __future__ import annotations

import numpy as np

from protocol import JobDone, PixelFormat
from protocol import client as client_module
from protocol.client import AtelierClient, make_upload
from protocol.messages import GenerateRequest, TextureSettings


def test_a_fragmented_upload_arrives_byte_for_byte(daemon):
    side = 768      # 2.25 MB of RGBA8: three fragments, the last a partial one
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    upload = make_upload(PixelFormat.RGBA8, side, side, rgba.tobytes())
    assert len(upload.data) > 2 * client_module.SEND_FRAGMENT
    assert len(list(client_module._fragments(client_module.encode_frame(upload)))) == 3
    with AtelierClient(daemon.url, client_name="pytest-fragments") as client:
        client.wait_connected()
        # a texture set's albedo from the image is the texture itself: the upload echoed
        job = GenerateRequest(kind="texture_set", init_image=upload.id,
                              texture=TextureSettings(maps=["albedo"], source="image"))
        done = client.run_job(job, [upload], timeout=60)
    assert isinstance(done, JobDone), done
    [albedo] = done.images
    got = np.frombuffer(albedo.data, np.uint8).reshape(side, side, -1)
    assert np.array_equal(got[..., :3], rgba[..., :3])
