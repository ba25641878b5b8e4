module MoFO.Tests.Tokenization

open System.IO
open Expecto
open MoFO
open MoFO.Tokenization
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

/// A byte-level BPE tokenizer.json written after the HF format (GPT-NeoX's layout: ByteLevel pre-tokenizer and
/// decoder, added special token <|endoftext|>); "Ġ" is the byte-level form of a space.
let tinyTokenizerJson (postProcessor: string) =
    let pieces = [ "h"; "e"; "l"; "o"; "w"; "r"; "d"; "Ġ"; "he"; "ll"; "hell"; "hello"; "Ġw"; "or"; "Ġwor"; "ld"; "Ġworld"; "!" ]
    let vocab = pieces |> List.mapi (fun i p -> sprintf "\"%s\": %d" p (i + 2)) |> String.concat ", "
    sprintf """{
  "version": "1.0",
  "added_tokens": [
    {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<|padding|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": %s,
  "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "vocab": {"<|endoftext|>": 0, "<|padding|>": 1, %s},
            "merges": ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]}
}""" postProcessor vocab

[<Tests>]
let tests =
    testList "Tokenization" [
        test "Tokenization.llama2: 'Once upon a time' is 1, 9038, 2501, 263, 931 with BOS and decodes back" {
            let t = TextTokenizer.Load(requireAsset DataRoot.Assets.Llama2Tokenizer)
            Expect.sequenceEqual (t.Encode("Once upon a time", true)) [ 1; 9038; 2501; 263; 931 ] "with BOS"
            Expect.sequenceEqual (t.Encode("Once upon a time", false)) [ 9038; 2501; 263; 931 ] "without BOS"
            Expect.sequenceEqual (t.Encode "Once upon a time") [ 1; 9038; 2501; 263; 931 ] "BOS by default, as HF's LlamaTokenizer"
            Expect.equal (t.BosId, t.EosId, t.VocabSize) (Some 1 |> Option.toNullable, Some 2 |> Option.toNullable, 32000) "ids and size"
            Expect.equal (t.Decode [ 1; 9038; 2501; 263; 931; 2 ]) "Once upon a time" "decode drops BOS/EOS"
        }

        test "Tokenization.tok512: round-trips text; an empty text with BOS is just BOS" {
            let t = TextTokenizer.Load(requireAsset DataRoot.Assets.Tok512)
            Expect.equal t.VocabSize 512 "vocabulary"
            let text = "Lily and Tom played with a red ball. They were happy!"
            let ids = t.Encode(text, true)
            Expect.equal ids[0] 1 "BOS first"
            Expect.isTrue (ids |> Seq.forall (fun i -> i >= 0 && i < 512)) "ids in range"
            Expect.equal (t.Decode ids) text "round trip"
            Expect.sequenceEqual (t.Encode("", true)) [ 1 ] "empty + BOS"
            Expect.isEmpty (t.Encode("", false)) "empty"
        }

        test "Tokenization.bpe: a tokenizer.json byte-level BPE applies merges by rank, keeps specials whole, adds no BOS" {
            use dir = new TempDir()
            let f = dir.File "tokenizer.json"
            File.WriteAllText(f, tinyTokenizerJson """{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}""")
            let t = TextTokenizer.Load f
            let id (p: string) = 2 + List.findIndex ((=) p) [ "h"; "e"; "l"; "o"; "w"; "r"; "d"; "Ġ"; "he"; "ll"; "hell"; "hello"; "Ġw"; "or"; "Ġwor"; "ld"; "Ġworld"; "!" ]
            Expect.sequenceEqual (t.Encode "hello world") [ id "hello"; id "Ġworld" ] "merged words"
            Expect.sequenceEqual (t.Encode "hello world!") [ id "hello"; id "Ġworld"; id "!" ] "punctuation apart"
            Expect.sequenceEqual (t.Encode "hold") [ id "h"; id "o"; id "ld" ] "partial merges"
            Expect.sequenceEqual (t.Encode "hello<|endoftext|>") [ id "hello"; 0 ] "special token matched whole"
            Expect.isFalse t.AddsBosByDefault "GPT-NeoX adds no BOS"
            Expect.equal (t.EosId, t.BosId) (Some 0 |> Option.toNullable, Some 0 |> Option.toNullable) "<|endoftext|> is BOS and EOS"
            Expect.equal (t.Decode [ id "hello"; id "Ġworld"; 0 ]) "hello world" "decode, special dropped"
            Expect.equal t.VocabSize 20 "vocabulary size"
        }

        test "Tokenization.bpe.templateBos: a TemplateProcessing post-processor that starts with a special token adds BOS" {
            use dir = new TempDir()
            let f = dir.File "tokenizer.json"
            File.WriteAllText(f, tinyTokenizerJson """{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|padding|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {}}""")
            let t = TextTokenizer.Load f
            Expect.isTrue t.AddsBosByDefault "BOS by default"
            Expect.sequenceEqual (t.Encode "hello") [ 1; 13 ] "BOS then hello"
        }

        test "Tokenization.bpe.splitRegex: a Split pre-tokenizer's regex replaces GPT-2's (Llama-3 style Sequence)" {
            use dir = new TempDir()
            let f = dir.File "tokenizer.json"
            let json =
                (tinyTokenizerJson "null")
                    .Replace(""""pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}""",
                             """"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\p{L}+|\\s+"}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}""")
            File.WriteAllText(f, json)
            let t = TextTokenizer.Load f
            // the space is its own piece, so "Ġw" can never form: h-e-l-l-o | Ġ | w-o-r-l-d
            Expect.sequenceEqual (t.Encode "hello world") [ 13; 9; 6; 15; 17 ] "hello, Ġ, w, or, ld"
            Expect.equal (t.Decode(t.Encode "hello world")) "hello world" "round trip"
        }

        test "Tokenization.errors: a missing file and a non-BPE tokenizer.json are clear errors" {
            let e = throwsWith<FileNotFoundException> (fun () -> TextTokenizer.Load "/nonexistent/tokenizer.model" |> ignore)
            Expect.stringContains e.Message "/nonexistent/tokenizer.model" "names the file"
            use dir = new TempDir()
            let f = dir.File "tokenizer.json"
            File.WriteAllText(f, """{"model": {"type": "WordPiece", "vocab": {}}}""")
            let e = throwsWith<MoFO.Checkpoints.CheckpointException> (fun () -> TextTokenizer.Load f |> ignore)
            Expect.stringContains e.Message "model.type: 'WordPiece' is not supported (expected BPE)" "names the field"
        }
    ]
