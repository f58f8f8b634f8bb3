package loadtest

import "testing"

func TestTemplateBody(t *testing.T) {
	b := TemplateBody([]byte(`{"order":{{seq}},"key":"o-{{seq}}"}`))
	if got := string(b(42)); got != `{"order":42,"key":"o-42"}` {
		t.Errorf("got %s", got)
	}
	fixed := TemplateBody([]byte(`{"a":1}`))
	if got := string(fixed(7)); got != `{"a":1}` {
		t.Errorf("got %s", got)
	}
}

func TestLinesBody(t *testing.T) {
	b, err := LinesBody([]byte("{\"n\":1,\"s\":{{seq}}}\r\n\n  \n{\"n\":2}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for seq, want := range map[uint64]string{1: `{"n":1,"s":1}`, 2: `{"n":2}`, 3: `{"n":1,"s":3}`, 4: `{"n":2}`} {
		if got := string(b(seq)); got != want {
			t.Errorf("body(%d) = %s, want %s", seq, got, want)
		}
	}
	if _, err := LinesBody([]byte("\n \n")); err == nil {
		t.Error("no error for an empty file")
	}
}
