// Command wordcount is an example Wasm tool: for {"text": "...", "top": N} it writes the text's
// line, word and character counts and its N most frequent words (case-folded) to
// /axocoatl/output.json.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

type input struct {
	Text string `json:"text"`
	Top  *int   `json:"top"`
}

type count struct {
	Word  string `json:"word"`
	Count int    `json:"count"`
}

type output struct {
	Lines int     `json:"lines"`
	Words int     `json:"words"`
	Chars int     `json:"chars"`
	Top   []count `json:"top"`
}

func main() {
	raw, err := os.ReadFile("/axocoatl/input.json")
	if err != nil {
		fail(err)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		fail(err)
	}
	top := 5
	if in.Top != nil {
		top = *in.Top
	}
	out := output{Chars: utf8.RuneCountInString(in.Text), Top: []count{}}
	if in.Text != "" {
		out.Lines = strings.Count(in.Text, "\n") + 1
		if strings.HasSuffix(in.Text, "\n") {
			out.Lines--
		}
	}
	freq := map[string]int{}
	for _, w := range strings.FieldsFunc(in.Text, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '\'' }) {
		freq[strings.ToLower(w)]++
		out.Words++
	}
	for w, n := range freq {
		out.Top = append(out.Top, count{w, n})
	}
	sort.Slice(out.Top, func(i, j int) bool {
		if out.Top[i].Count != out.Top[j].Count {
			return out.Top[i].Count > out.Top[j].Count
		}
		return out.Top[i].Word < out.Top[j].Word
	})
	if len(out.Top) > top {
		out.Top = out.Top[:top]
	}
	b, err := json.Marshal(out)
	if err != nil {
		fail(err)
	}
	if err := os.WriteFile("/axocoatl/output.json", b, 0o644); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "wordcount:", err)
	os.Exit(1)
}
