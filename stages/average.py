"""Stage `average`: weight averaging after adaptation (Vander Eeckt & Van hamme), θ = (1 − α)·θ* + α·θ_adapted with
α = `average.alpha`: θ* the pretrained weights, θ_adapted the adapt stage's. α = 1 writes the adapted weights, α = 0
the pretrained ones, bit for bit (a parameter the pretrained model lacks, such as the mask embedding when only adapt
masks time, is the adapted one's). Cheap, and its own stage: `dvc exp run -S average.alpha=0.5` re-runs only this
stage and eval."""

from pathlib import Path

from forgetting.averaging import average_weights
from forgetting.model import load_trained, save_model
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--pretrained", type=Path, required=True, help="the pretrained model folder (θ*)")
    parser.add_argument("--adapted", type=Path, required=True, help="the adapted model folder")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    args, params = cli.start(parser)
    alpha = params.average.alpha

    model, processor = load_trained(args.adapted)  # a cut or foreign weights file is refused here, naming it
    anchor, adapted = load_trained(args.pretrained)[0].state_dict(), model.state_dict()
    # a parameter only adapt has (the mask embedding, when only adapt masks time) has no θ*: it is taken as adapted
    shared = [name for name in adapted if name in anchor]
    averaged = average_weights({n: anchor[n] for n in shared}, {n: adapted[n] for n in shared}, alpha)
    model.load_state_dict({**adapted, **averaged}, strict=True)
    save_model(model, processor, args.out)
    print(f"average: θ = {1 - alpha:g}·θ* + {alpha:g}·θ_adapted over {len(averaged)} tensors -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
