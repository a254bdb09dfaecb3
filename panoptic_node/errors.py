"""Saying a caught exception in one line."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries such as torch, onnx and ffmpeg write paragraphs),
    or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
