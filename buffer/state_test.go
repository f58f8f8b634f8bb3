package buffer

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestStateRoundTrip(t *testing.T) {
	st := &State{Phase: Retrying, Attempts: 2, NextTry: time.Unix(1700000000, 0).UTC(),
		History: []Attempt{{N: 1, At: time.Unix(1, 0).UTC(), Status: 503, Error: "status 503", Duration: time.Millisecond}}}
	b := encodeState(st)
	got, err := decodeState(b)
	if err != nil || !reflect.DeepEqual(got, st) {
		t.Fatalf("got %+v, %v", got, err)
	}
	b[len(b)-2] ^= 1
	if _, err := decodeState(b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged state: err = %v", err)
	}
}
