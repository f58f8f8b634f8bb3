package admin

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium finds Debian's chromium (which .ci/run installs). Without it the
// test is skipped, unless CI is set: then it fails.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed, and CI is set: .ci/run installs it (apt-get install chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium); the dashboard test needs it")
	return ""
}

// TestDashboardInChromium loads the dashboard in headless Chromium against
// a test server: the page takes the token, shows the target's backlog and
// draws its charts with the vendored uPlot; a click on pause pauses the
// target. The token never appears in a URL the page requested.
func TestDashboardInChromium(t *testing.T) {
	exe := chromium(t)
	f := newFixture(t)
	// The profile directory: Chromium's helpers may still write in it just
	// after the browser exits, so it is removed with a few tries.
	profile, err := os.MkdirTemp("", "sluice-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for range 20 {
			if os.RemoveAll(profile) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA() // after cancel: kills the browser and waits for it
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 30*time.Second)
	defer cancelT()

	// Some history, as the server samples it, for the charts.
	now := time.Now()
	for i := range 30 {
		f.server.hist.add(Sample{At: now.Add(time.Duration(i-30) * 2 * time.Second), Appended: uint64(100 * i), Delivered: uint64(60 * i),
			Backlog: map[string]uint64{"orders/inv": uint64(40 * i)}})
	}
	row := `tr[data-route="orders"][data-target="inv"]`
	var backlog, charts, legend string
	steps := []struct {
		name string
		act  chromedp.Action
	}{
		{"load the page", chromedp.Navigate(f.srv.URL + "/")},
		{"find the token field", chromedp.WaitVisible(`#token`, chromedp.ByQuery)},
		{"type the token", chromedp.SendKeys(`#token`, token, chromedp.ByQuery)},
		{"submit it", chromedp.Click(`#login button`, chromedp.ByQuery)},
		{"show the target", chromedp.WaitVisible(row+` td.backlog`, chromedp.ByQuery)},
		{"read its backlog", chromedp.Text(row+` td.backlog`, &backlog, chromedp.ByQuery)},
		{"draw the charts", chromedp.WaitVisible(`#chart-backlog .uplot`, chromedp.ByQuery)},
		{"count the charts", chromedp.Evaluate(`document.querySelectorAll(".uplot").length + ""`, &charts)},
		{"read the backlog chart's legend", chromedp.Evaluate(`document.querySelector("#chart-backlog .u-legend").textContent`, &legend)},
	}
	for _, s := range steps {
		if err := chromedp.Run(ctx, s.act); err != nil {
			var status string
			chromedp.Run(ctx, chromedp.Text(`#status`, &status, chromedp.ByQuery))
			t.Fatalf("%s: %v (page status %q)", s.name, err, status)
		}
	}
	if backlog != "42" {
		t.Errorf("backlog shown %q, want 42", backlog)
	}
	if charts != "2" {
		t.Errorf("%s charts drawn, want 2 (backlog, rates)", charts)
	}
	if !strings.Contains(legend, "orders/inv") {
		t.Errorf("the backlog chart has no series orders/inv: legend %q", legend)
	}
	if p, _ := f.node.inv.state(); p {
		t.Fatal("paused before the click")
	}
	err = chromedp.Run(ctx,
		chromedp.Click(row+` button.pause`, chromedp.ByQuery),
		chromedp.WaitVisible(row+` button.resume`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("pause click: %v", err)
	}
	if p, _ := f.node.inv.state(); !p {
		t.Error("the click did not pause the target")
	}
	if o, ok := f.controls.Get("orders", "inv"); !ok || !o.Paused {
		t.Error("the pause is not in the operator controls")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range f.urls {
		if strings.Contains(u, token) {
			t.Errorf("the token was sent in a URL: %s", u)
		}
	}
	if len(f.urls) < 4 {
		t.Errorf("requests seen: %v", f.urls)
	}
}
