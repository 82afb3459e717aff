"""`hf-medvlm export | push | convert-checkpoint | ask`: thin shells over the functions of `hf_medvlm.hub`."""

import json
from pathlib import Path


def _export(args) -> None:
    from .export import export_model

    eval_results = json.loads(Path(args.eval_results).read_text()) if args.eval_results else None
    out = export_model(
        args.model, args.out, eval_results, base_model=args.base_model, license=args.license, datasets=args.dataset,
        tags=args.tag, model_name=args.model_name, repo_id=args.repo_id, max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(f"exported to {out}")


def _push(args) -> None:
    from .push import push_to_hub

    print(push_to_hub(args.model, args.repo_id, private=args.private, revision=args.revision))


def _convert(args) -> None:
    from .convert import convert_checkpoint

    out = convert_checkpoint(
        args.source_format, args.src, args.out, vision_tower=args.vision_tower, scales=args.scales,
        chat_format=args.chat_format, tokenizer=args.tokenizer,
    )
    print(f"converted to {out}")


def _ask(args) -> None:
    from .ask import ask

    ask(
        args.model, args.image, args.question, max_new_tokens=args.max_new_tokens, window=args.window,
        frame=args.frame, trust_remote_code=args.trust_remote_code,
    )


def add_hub_commands(subparsers) -> None:
    """Add the `export`, `push`, `convert-checkpoint` and `ask` subcommands to an argparse subparsers object."""
    from .convert import SOURCE_FORMATS

    export = subparsers.add_parser("export", help="write a Hub-ready folder: shards, remote code, model card, handler")
    export.add_argument("--model", required=True, help="saved model folder (with its processor)")
    export.add_argument("--out", required=True)
    export.add_argument("--repo-id", default=None, help="target ORG/NAME, for absolute links in the card")
    export.add_argument("--model-name", default=None)
    export.add_argument("--base-model", nargs="+", default=None, help="Hub ids of the models it derives from")
    export.add_argument("--dataset", nargs="+", default=None, help="Hub ids of the training datasets")
    export.add_argument("--tag", nargs="+", default=None)
    export.add_argument("--license", default="apache-2.0")
    export.add_argument("--eval-results", default=None, help="JSON file: a list of huggingface_hub.EvalResult fields")
    export.add_argument("--max-shard-size", default="5GB")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=_export)

    push = subparsers.add_parser("push", help="upload an exported folder to the Hub in one commit")
    push.add_argument("--model", required=True, help="exported folder")
    push.add_argument("--repo-id", required=True, help="ORG/NAME")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    push.set_defaults(func=_push)

    convert = subparsers.add_parser("convert-checkpoint", help="convert an original checkpoint to this model")
    convert.add_argument("--from", dest="source_format", required=True, choices=SOURCE_FORMATS)
    convert.add_argument("src", help="checkpoint folder or Hub id")
    convert.add_argument("--out", required=True)
    convert.add_argument("--vision-tower", default=None, help="separately stored vision tower (folder, file, Hub id)")
    convert.add_argument("--scales", type=int, nargs="+", default=None)
    convert.add_argument("--chat-format", default=None, help="mistral_instruct, vicuna_v1, llama3 or chatml")
    convert.add_argument("--tokenizer", default=None, help="tokenizer folder or id when the checkpoint has none")
    convert.set_defaults(func=_convert)

    ask = subparsers.add_parser("ask", help="ask a model about an image (PNG, JPEG, TIFF, DICOM); streams the answer")
    ask.add_argument("--model", required=True, help="model folder or Hub id")
    ask.add_argument("image")
    ask.add_argument("question")
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--window", default=None, help="DICOM window preset (lung, mediastinum, bone, brain, abdomen)")
    ask.add_argument("--frame", type=int, default=None, help="frame of a multi-frame DICOM file")
    ask.add_argument("--trust-remote-code", action="store_true", help="run model code shipped with the weights")
    ask.set_defaults(func=_ask)


__all__ = ["add_hub_commands"]
