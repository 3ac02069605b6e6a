import pytest

from lmforge.data.corpus import book_text, load_corpus, passages
from lmforge.errors import UserError


def test_gutenberg_passages_skip_the_license_and_the_headings():
    found = load_corpus("gutenberg")
    assert len(found) > 10_000
    assert all(8 <= len(p.split()) <= 48 for p in found)
    assert not any("Gutenberg" in p for p in found[:2000])
    assert load_corpus("gutenberg") == found  # deterministic


def test_book_text_and_passages(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(
        "\ufeffheader\r\n*** START OF THE BOOK ***\r\nCHAPTER I\r\n\r\none two three four\r\nfive six seven eight"
        " nine\r\n\r\n*** END OF THE BOOK ***\r\nlicense\r\n",
        encoding="utf-8",
    )
    text = book_text(path)
    assert "header" not in text and "license" not in text
    assert passages(text, words=4, min_words=3) == ["one two three four", "five six seven eight"]
    assert passages(text, words=48, min_words=8) == ["one two three four five six seven eight nine"]


def test_user_text_files(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("a b c d e f g h i\n\nshort\n", encoding="utf-8")
    assert load_corpus(str(good)) == ["a b c d e f g h i"]
    with pytest.raises(UserError, match="expected 'gutenberg' or a .txt file"):
        load_corpus("wikipedia")
    with pytest.raises(UserError, match="file not found"):
        load_corpus(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(bad))
    (tmp_path / "empty.txt").write_text("tiny\n")
    with pytest.raises(UserError, match="no passage"):
        load_corpus(str(tmp_path / "empty.txt"))
