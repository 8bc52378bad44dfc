"""The oracle nobody here wrote: transformers + peft, one request at a time, greedy, float32."""
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


class HFOracle:
    def __init__(self, model_dir: Path, adapters: dict[str, Path]) -> None:
        base = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
        names = list(adapters)
        self.model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0]).eval()
        for name in names[1:]:
            self.model.load_adapter(adapters[name], adapter_name=name)
        self.cache: dict[tuple, tuple[list[int], list[float]]] = {}

    @torch.inference_mode()
    def greedy(self, prompt_ids: list[int], adapter: str | None, max_tokens: int) -> tuple[list[int], list[float]]:
        """Greedy continuation of `prompt_ids` (no EOS stop) and each chosen token's log-probability."""
        key = (tuple(prompt_ids), adapter, max_tokens)
        if key not in self.cache:
            if adapter is None:
                with self.model.disable_adapter():
                    self.cache[key] = self._greedy(prompt_ids, max_tokens)
            else:
                self.model.set_adapter(adapter)
                self.cache[key] = self._greedy(prompt_ids, max_tokens)
        return self.cache[key]

    def _greedy(self, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        ids = torch.tensor([prompt_ids])
        tokens, logprobs, past = [], [], None
        for _ in range(max_tokens):
            out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            lp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            token = int(lp.argmax())
            tokens.append(token)
            logprobs.append(float(lp[token]))
            ids = torch.tensor([[token]])
        return tokens, logprobs
