package admin

import (
	"embed"
	"net/http"
	"path"
)

// ui holds the dashboard: a page, its script and style, and uPlot
// (github.com/leeoniya/uPlot, MIT, uPlot.LICENSE), vendored from npm's
// uplot 1.6.32 dist files so that the page works with no internet.
//
//go:embed ui
var ui embed.FS

// dashboard serves the dashboard's files. They hold no data: the page asks
// for the token and sends it with each API call.
func (s *Server) dashboard(w http.ResponseWriter, r *http.Request) {
	name := "ui/index.html"
	if r.URL.Path != "/" {
		name = path.Clean(r.URL.Path[1:])
	}
	data, err := ui.ReadFile(name)
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", "no such file")
		return
	}
	switch path.Ext(name) {
	case ".html":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
	case ".js":
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	case ".css":
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
	default:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	// The page runs only its own files and talks only to this listener.
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Write(data)
}
