package buffer

import (
	"cmp"
	"slices"
)

// pendingSet holds the outcomes that are in the outcome journal and not yet
// in their segments' bbolt files, in the form a checkpoint writes them: a
// block (blocks.go) per segment, target and block of 64 seqs. Adding one
// costs no allocation while outcomes come in seq order (the common case:
// a consumer reads its queue in order), and a checkpoint writes each block
// with one bbolt put, without sorting outcomes.
//
// Memory: a block costs ~1.6 KB whatever it holds (64 slots of 24 bytes;
// its entries point into the journal's frame buffers, ~65 bytes an
// outcome for a target name of a few bytes). A checkpoint is due at
// checkpointAt outcomes or maxPendingBlocks blocks (~6.5 MB), whichever
// comes first.
//
// The writer adds and clears under Queue.mu; readers read under it.
type pendingSet struct {
	blocks map[pendBlockKey]*block
	perSeg map[*segment]int // outcomes per segment
	n      int              // outcomes

	// The block the last add went to.
	lastKey pendBlockKey
	last    *block
}

type pendBlockKey struct {
	seg    *segment
	target int
	first  uint64
}

// maxPendingBlocks bounds the pending set's blocks (see pendingSet).
const maxPendingBlocks = 4096

func newPendingSet() *pendingSet {
	return &pendingSet{blocks: map[pendBlockKey]*block{}, perSeg: map[*segment]int{}}
}

// add records rec as seq's outcome for target t in segment s, unless it has
// one already (the first outcome counts).
func (p *pendingSet) add(s *segment, t int, seq uint64, rec []byte) {
	k := pendBlockKey{s, t, blockFirst(seq)}
	b := p.last
	if b == nil || k != p.lastKey {
		b = p.blocks[k]
		if b == nil {
			b = new(block)
			p.blocks[k] = b
		}
		p.lastKey, p.last = k, b
	}
	i := seq - k.first
	if b[i] != nil {
		return
	}
	b[i] = rec
	p.perSeg[s]++
	p.n++
}

// get returns the pending outcome of seq for target t in segment s, or nil.
func (p *pendingSet) get(s *segment, t int, seq uint64) []byte {
	if p.perSeg[s] == 0 {
		return nil
	}
	f := blockFirst(seq)
	if b := p.blocks[pendBlockKey{s, t, f}]; b != nil {
		return b[seq-f]
	}
	return nil
}

// inSegment reports how many outcomes of segment s are pending.
func (p *pendingSet) inSegment(s *segment) int { return p.perSeg[s] }

// due reports whether a checkpoint is due by size.
func (p *pendingSet) due() bool { return p.n >= checkpointAt || len(p.blocks) >= maxPendingBlocks }

// segments returns the segments with pending outcomes, oldest first, each
// with its blocks by target: target index -> blocks by first seq.
func (p *pendingSet) segments() []pendSegment {
	bySeg := map[*segment]*pendSegment{}
	var out []*pendSegment
	for k, b := range p.blocks {
		ps := bySeg[k.seg]
		if ps == nil {
			ps = &pendSegment{seg: k.seg, byTarget: map[int][]pendBlock{}}
			bySeg[k.seg] = ps
			out = append(out, ps)
		}
		ps.byTarget[k.target] = append(ps.byTarget[k.target], pendBlock{k.first, b})
	}
	slices.SortFunc(out, func(a, b *pendSegment) int { return cmp.Compare(a.seg.first, b.seg.first) })
	segs := make([]pendSegment, len(out))
	for i, ps := range out {
		for _, bl := range ps.byTarget {
			slices.SortFunc(bl, func(a, b pendBlock) int { return cmp.Compare(a.first, b.first) })
		}
		segs[i] = *ps
	}
	return segs
}

// pendSegment is one segment's pending blocks, by target index.
type pendSegment struct {
	seg      *segment
	byTarget map[int][]pendBlock
}

// pendBlock is one pending block and its first seq.
type pendBlock struct {
	first uint64
	b     *block
}
