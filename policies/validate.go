package policies

// Validate checks the options of t that cannot be used together, in the
// one wording the parser reports and drain.New refuses a Target built in
// code with: capture_response, ordering or fairness with batch, fairness
// with ordering, and an ordering or fairness key with no header. It returns
// every problem, each naming its key relative to the target (Field, such as
// "fairness") and the line of that key (0 for a Target built in code); File
// is left for the caller. nil if there is none.
//
// The checks that need the route (a spillover route's target takes none of
// ordering, fairness, batch or a log protocol) are the parser's.
func (t *Target) Validate() Errors {
	var errs Errors
	add := func(line int, field, msg string) {
		errs = append(errs, &Error{Line: line, Field: field, Msg: msg})
	}
	if t.CaptureResponse != nil && t.Batch != nil {
		add(t.CaptureResponse.Line, "capture_response", "capture_response keeps one message's answer; a batch target sends many messages per request")
	}
	if t.Ordering != nil {
		if t.Ordering.Key.Header == "" {
			add(t.Ordering.Line, "ordering.key", "ordering needs a key, such as header:X-Customer-Id")
		}
		if t.Batch != nil {
			add(t.Ordering.Line, "ordering", "ordering sends one message per key at a time; a batch target sends many messages per request")
		}
	}
	if t.Fairness != nil {
		if t.Fairness.Key.Header == "" {
			add(t.Fairness.Line, "fairness.key", "fairness needs a key, such as header:X-Customer-Id")
		}
		if t.Ordering != nil {
			add(t.Fairness.Line, "fairness", "fairness cannot be combined with ordering (yet); choose one")
		}
		if t.Batch != nil {
			add(t.Fairness.Line, "fairness", "fairness cannot be combined with batch (yet)")
		}
	}
	return errs
}
