"""Parameter counts of the backbone and the expert, without loading (or allocating) weights.

`training/configs/*.json` ship the transformer configs of the real backbones (CogVideoX-5b-I2V,
Wan2.1-I2V-14B-480P) so the counts can be checked against the paper (≈5.4B, ≈4.3B) offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vap.errors import ModelError

CONFIGS = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    backbone: str
    num_layers: int
    blocks: list[int]
    backbone_params: int
    expert_params: int

    def summary(self) -> str:
        blocks = self.blocks
        shown = f"{blocks[0]}..{blocks[-1]}" if blocks == list(range(blocks[0], blocks[-1] + 1)) and blocks \
            else ",".join(map(str, blocks))
        return (f"{self.name} ({self.family}, {self.backbone})\n"
                f"  backbone (frozen): {human(self.backbone_params)} parameters, {self.num_layers} blocks\n"
                f"  expert (trainable): {human(self.expert_params)} parameters, {len(blocks)} blocks [{shown}]")


def human(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M")):
        if n >= scale:
            return f"{n / scale:.3f}{unit}"
    return f"{n:,}"


def shipped() -> dict[str, dict]:
    """The shipped real-backbone configs by name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(CONFIGS.glob("*.json"))}


def count(family: str, transformer_config: dict, blocks="default", name: str = "", backbone: str = "") -> ModelInfo:
    """Counts from a config alone: both modules are built on the meta device."""
    from vap.training.families import get_family
    from vap.training.model import VAPExpert, _empty_backbone, plain_config, resolve_blocks

    fam = get_family(family)
    config = plain_config(transformer_config)
    fam.check_config(config)
    model = _empty_backbone(fam, config)
    chosen = resolve_blocks(blocks, fam, fam.num_layers(config))
    expert = VAPExpert(fam.name, config, chosen)
    return ModelInfo(name=name or backbone, family=fam.name, backbone=backbone, num_layers=fam.num_layers(config),
                     blocks=chosen, backbone_params=sum(p.numel() for p in model.parameters()),
                     expert_params=sum(p.numel() for p in expert.parameters()))


def model_info(source: str, family: str | None = None, blocks="default") -> ModelInfo:
    """`source` is a shipped config name (see `shipped()`), or a backbone path / hub id / URI."""
    configs = shipped()
    if source in configs:
        c = configs[source]
        return count(c["family"], c["transformer"], blocks, name=source, backbone=c["backbone"])
    from vap.training.families import family_of_transformer, resolve_backbone

    local = Path(resolve_backbone(source, ["transformer/config.json"]))
    path = local / "transformer" / "config.json"
    if not path.exists():
        raise ModelError(f"{source}: neither a shipped config ({', '.join(configs)}) nor a backbone with "
                         "transformer/config.json")
    config = json.loads(path.read_text())
    fam = family_of_transformer(config.get("_class_name", ""))
    if fam is None:
        raise ModelError(f"{source}: transformer is a {config.get('_class_name')}, not a CogVideoX or Wan one")
    if family and family != fam.name:
        raise ModelError(f"{source} holds a {fam.transformer_class} but family '{family}' was asked for")
    return count(fam.name, config, blocks, name=source, backbone=source)
