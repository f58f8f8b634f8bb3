package loadtest

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The chart's size in pixels at chartDPI. Wide enough for a minute of
// seconds to be told apart, small enough for a README.
const (
	chartWidthPx  = 1200
	chartHeightPx = 800
	chartDPI      = 96
)

// Colours that stay apart for the common kinds of colour blindness
// (Okabe-Ito), and in greyscale thanks to the dashes and widths.
var (
	colOffered   = color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff}
	colAccepted  = color.RGBA{R: 0x00, G: 0x72, B: 0xb2, A: 0xff}
	colDelivered = color.RGBA{R: 0x00, G: 0x9e, B: 0x73, A: 0xff}
	colCapacity  = color.RGBA{R: 0xd5, G: 0x5e, B: 0x00, A: 0xff}
	colBacklog   = color.RGBA{R: 0xe6, G: 0x9f, B: 0x00, A: 0xff}
	colBacklogBg = color.NRGBA{R: 0xe6, G: 0x9f, B: 0x00, A: 0x50}
)

// WriteChart draws the run as a PNG: on one time axis, the offered,
// accepted and delivered rates per second with the downstream's capacity
// above, and the backlog (accepted minus delivered) below.
func (r Report) WriteChart(w io.Writer) error {
	b, err := r.chartPNG()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (r Report) chartPNG() ([]byte, error) {
	rates, backlog, err := r.chartPlots()
	if err != nil {
		return nil, fmt.Errorf("loadtest: chart: %w", err)
	}
	pt := func(px int) vg.Length { return vg.Length(px) * vg.Inch / chartDPI }
	img := vgimg.NewWith(vgimg.UseWH(pt(chartWidthPx), pt(chartHeightPx)), vgimg.UseDPI(chartDPI))
	dc := draw.New(img)

	// The rates get twice the height of the backlog; both share the x range,
	// and Align lines their data areas up so the time axes match exactly.
	tiles := draw.Tiles{Rows: 3, Cols: 1, PadTop: 8, PadBottom: 8, PadLeft: 8, PadRight: 16, PadY: 14}
	top := tiles.At(dc, 0, 0)
	top.Min.Y = tiles.At(dc, 0, 1).Min.Y
	bottom := tiles.At(dc, 0, 2)
	whole := draw.Canvas{Canvas: dc.Canvas, Rectangle: vg.Rectangle{Min: bottom.Min, Max: top.Max}}
	canvases := plot.Align([][]*plot.Plot{{rates}, {backlog}},
		draw.Tiles{Rows: 2, Cols: 1, PadY: 14}, whole)
	// Align splits evenly; redo the split 2:1 with the same left and right
	// edges, which is what makes the data areas line up.
	c0, c1 := canvases[0][0], canvases[1][0]
	c0.Min.Y, c0.Max.Y = top.Min.Y, top.Max.Y
	c1.Min.Y, c1.Max.Y = bottom.Min.Y, bottom.Max.Y
	rates.Draw(c0)
	backlog.Draw(c1)

	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("loadtest: chart: %w", err)
	}
	return buf.Bytes(), nil
}

// chartPlots builds the two panels. Each second i is drawn over [i, i+1):
// a per-second count is a step, not a point.
func (r Report) chartPlots() (rates, backlog *plot.Plot, err error) {
	n := len(r.Series)
	offered := make(plotter.XYs, n+1)
	accepted := make(plotter.XYs, n+1)
	delivered := make(plotter.XYs, n+1)
	queued := make(plotter.XYs, n+1) // backlog at the end of each second; 0 at the start
	ymax := 1.0
	for i, p := range r.Series {
		x := float64(i)
		offered[i] = plotter.XY{X: x, Y: float64(p.Offered)}
		accepted[i] = plotter.XY{X: x, Y: float64(p.Accepted)}
		delivered[i] = plotter.XY{X: x, Y: float64(p.Delivered)}
		queued[i+1] = plotter.XY{X: x + 1, Y: float64(p.Backlog)}
		ymax = max(ymax, float64(p.Offered), float64(p.Accepted), float64(p.Delivered))
	}
	// The last step ends at n at the last second's height.
	for _, xys := range []plotter.XYs{offered, accepted, delivered} {
		xys[n] = plotter.XY{X: float64(n), Y: 0}
		if n > 0 {
			xys[n].Y = xys[n-1].Y
		}
	}
	xmax := float64(max(n, 1))

	rates = newPanel("sluice load test: offered, accepted (202) and delivered (2xx at the downstream)",
		"", "requests per second")
	rates.X.Min, rates.X.Max, rates.Y.Min = 0, xmax, 0
	add := func(name string, xys plotter.XYs, c color.Color, width vg.Length, dashes []vg.Length) error {
		l, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		l.StepStyle = plotter.PostStep
		l.Color, l.Width, l.Dashes = c, width, dashes
		rates.Add(l)
		rates.Legend.Add(name, l)
		return nil
	}
	if err := add("offered", offered, colOffered, vg.Points(1.5), []vg.Length{vg.Points(6), vg.Points(3)}); err != nil {
		return nil, nil, err
	}
	if err := add("accepted", accepted, colAccepted, vg.Points(1.5), nil); err != nil {
		return nil, nil, err
	}
	if err := add("delivered", delivered, colDelivered, vg.Points(2.5), nil); err != nil {
		return nil, nil, err
	}
	if d := r.Downstream; !r.Unverified && d.Rate > 0 {
		name := fmt.Sprintf("downstream capacity %g/s", d.Rate)
		if d.Burst > 0 {
			name += fmt.Sprintf(" (+ burst %d)", d.Burst)
		}
		capXY := plotter.XYs{{X: 0, Y: d.Rate}, {X: xmax, Y: d.Rate}}
		if err := add(name, capXY, colCapacity, vg.Points(1.5), []vg.Length{vg.Points(2), vg.Points(3)}); err != nil {
			return nil, nil, err
		}
		ymax = max(ymax, d.Rate)
	}
	rates.Y.Max = ymax * 1.08 // room above the highest step
	rates.Legend.Top = true

	backlog = newPanel("backlog: accepted minus delivered, at the end of each second",
		"time since the start of the run (s)", "backlog (requests)")
	backlog.X.Min, backlog.X.Max, backlog.Y.Min = 0, xmax, 0
	if r.Unverified {
		backlog.Title.Text = "backlog: unknown (no downstream observed)"
		backlog.Y.Max = 1
		return rates, backlog, nil
	}
	bl, err := plotter.NewLine(queued)
	if err != nil {
		return nil, nil, fmt.Errorf("backlog: %w", err)
	}
	bl.Color, bl.Width, bl.FillColor = colBacklog, vg.Points(2), colBacklogBg
	backlog.Add(bl)
	backlog.Y.Max = max(1, float64(maxBacklog(r.Series))*1.08)
	return rates, backlog, nil
}

func maxBacklog(ps []Point) int {
	m := 0
	for _, p := range ps {
		m = max(m, p.Backlog)
	}
	return m
}

// newPanel is a plot with a grid and text sized for a 1200 px image.
func newPanel(title, xlabel, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(14)
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text, p.Y.Label.Text = xlabel, ylabel
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font.Size = vg.Points(12)
		a.Tick.Label.Font.Size = vg.Points(11)
		a.Tick.Marker = plot.TickerFunc(niceTicks)
	}
	p.Legend.TextStyle.Font = font.From(plot.DefaultFont, vg.Points(11))
	p.Legend.ThumbnailWidth = vg.Points(32)
	p.Legend.Padding = vg.Points(3)
	p.Legend.XOffs = -vg.Points(6)
	p.Add(plotter.NewGrid())
	return p
}

// niceTicks puts 4 to 10 major ticks on steps of 1, 2 or 5 times a
// power of ten, labelled as whole numbers (the chart counts requests and
// seconds), with unlabelled minor ticks between them.
func niceTicks(lo, hi float64) []plot.Tick {
	if hi <= lo {
		return []plot.Tick{{Value: lo, Label: strconv.FormatFloat(lo, 'f', -1, 64)}}
	}
	step := 1.0
	for _, mag := range []float64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9} {
		found := false
		for _, m := range []float64{1, 2, 5} {
			if step = m * mag; (hi-lo)/step <= 8 {
				found = true
				break
			}
		}
		if found {
			break
		}
	}
	minor := step / 5
	if step == 1 || step == 2 {
		minor = step / 2
		if step == 1 {
			minor = 0 // a second, or one request: no halves
		}
	}
	var ticks []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		for i := 1; minor > 0 && i < int(math.Round(step/minor)); i++ {
			if m := v + float64(i)*minor; m <= hi {
				ticks = append(ticks, plot.Tick{Value: m})
			}
		}
	}
	return ticks
}
