"""The tiny model zoo: synthetic skills, a character tokenizer, a base and its expert fine-tunes."""
