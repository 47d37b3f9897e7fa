"""Peak memory of real CPU training steps, for tests/test_memory.py (run as a script, one size a run).

    python tests/memory_probe.py '{"encoder": ..., "decoder": {...}, "captioner": {...}, ...}'
Prints the growth of the process's peak RSS over two training steps (AdamW state, gradients and
activations included), after a warm-up that loads the kernels' library pages (which are not memory
a GPU would hold).
"""

import contextlib
import json
import sys

import torch

from hw3lib.core.manifest import EncoderSpec
from hw3lib.models.captioner import Captioner, CaptionerConfig
from hw3lib.models.gpt2 import GPT2, GPT2Config
from hw3lib.models.loading import create_encoder
from hw3lib.training.loop import batch_loss


def status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def steps(model, images, pairs, eot, tokens, live, n=2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cached = None if live else model.encode(images)
    for _ in range(n):
        feats = model.encode(images) if live else cached
        batch_loss(model, feats, pairs, eot, tokens, contextlib.nullcontext).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cap = CaptionerConfig(**a["captioner"])
    tiny_spec = EncoderSpec(a["encoder"], model_kwargs={**a["encoder_kwargs"], "embed_dim": 64, "depth": 1, "num_heads": 2})
    tiny = Captioner(create_encoder(tiny_spec, pretrained=False), GPT2(GPT2Config.tiny(cross_attention=True)), cap)
    steps(tiny, torch.randn(2, 3, *a["image"]), [(0, [1, 2]), (1, [3])], 299, 4, a["live"], n=1)
    del tiny
    base = status("VmRSS")
    dcfg = GPT2Config(**a["decoder"], cross_attention=True)
    model = Captioner(create_encoder(EncoderSpec(a["encoder"], model_kwargs=a["encoder_kwargs"]), pretrained=False),
                      GPT2(dcfg), cap)
    B, T = a["batch"], a["tokens"]
    pairs = [(i, torch.randint(0, dcfg.vocab_size - 1, (T - 1,)).tolist()) for i in range(B)]
    steps(model, torch.randn(B, 3, *a["image"]), pairs, dcfg.vocab_size - 1, T, a["live"])
    print(status("VmHWM") - base)


if __name__ == "__main__":
    main()
