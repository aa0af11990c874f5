// SPDX-License-Identifier: GPL-2.0-only
/*
 * How an URB's data reaches the backend: fresh grants of the URB's own
 * pages (the stock protocol), or pages of a pool granted once and kept
 * (persistent grants), which the data is copied through. Through the pool,
 * a bulk URB too long for the ring entry's segments, or one with a
 * scatter-gather list, may go as one indirect request.
 */
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <asm/unaligned.h>
#include <xen/page.h>

#include "pvusb-hcd.h"

#define ISO_DESC_SIZE	sizeof(struct usb_iso_packet_descriptor)

static unsigned int pages_spanned(const void *addr, size_t len)
{
	return PFN_UP(offset_in_page(addr) + len);
}

static unsigned long buffer_gfn(const void *addr)
{
	if (is_vmalloc_addr(addr))
		return pfn_to_gfn(vmalloc_to_pfn(addr));
	return virt_to_gfn(addr);
}

/* Grants each page of [addr, addr + len) to the backend: one segment each. */
static unsigned int grant_fresh(struct pvusb_hc *hc, grant_ref_t *head,
				const void *addr, size_t len, bool readonly,
				struct xenusb_request_segment *seg)
{
	unsigned int n = 0;

	while (len) {
		unsigned int offset = offset_in_page(addr);
		unsigned int chunk = min_t(size_t, len, PAGE_SIZE - offset);
		grant_ref_t ref = gnttab_claim_grant_reference(head);

		gnttab_grant_foreign_access_ref(ref, hc->xbdev->otherend_id,
						buffer_gfn(addr), readonly);
		seg[n].gref = ref;
		seg[n].offset = offset;
		seg[n].length = chunk;
		n++;
		addr += chunk;
		len -= chunk;
	}
	hc->fresh_grants += n;
	return n;
}

static struct pvusb_pool_page *pool_get(struct pvusb_hc *hc)
{
	struct pvusb_pool_page *p;
	int ref;

	p = list_first_entry_or_null(&hc->pool_free, struct pvusb_pool_page,
				     list);
	if (p) {
		list_del(&p->list);
		return p;
	}
	if (hc->pool_pages >= PVUSB_MAX_POOL_PAGES)
		return NULL;
	p = kmalloc(sizeof(*p), GFP_ATOMIC);
	if (!p)
		return NULL;
	p->page = alloc_page(GFP_ATOMIC);
	if (!p->page)
		goto free_p;
	ref = gnttab_grant_foreign_access(hc->xbdev->otherend_id,
					  xen_page_to_gfn(p->page), 0);
	if (ref < 0)
		goto free_page;
	p->gref = ref;
	hc->pool_pages++;
	return p;

free_page:
	__free_page(p->page);
free_p:
	kfree(p);
	return NULL;
}

static void pool_put_all(struct pvusb_hc *hc, struct pvusb_shadow *shadow)
{
	list_splice_init(&shadow->pool, &hc->pool_free);
	shadow->iso_desc = NULL;
}

/*
 * Takes pool pages for len bytes onto shadow's list, one segment each in
 * seg[], each from offset 0. Returns the first of them, or NULL when the
 * pool has not enough free (the caller puts back what was taken).
 */
static struct pvusb_pool_page *take_pages(struct pvusb_hc *hc,
					  struct pvusb_shadow *shadow,
					  size_t len,
					  struct xenusb_request_segment *seg)
{
	struct pvusb_pool_page *first = NULL;
	unsigned int n = 0;

	while (len) {
		unsigned int chunk = min_t(size_t, len, PAGE_SIZE);
		struct pvusb_pool_page *p = pool_get(hc);

		if (!p)
			return NULL;
		list_add_tail(&p->list, &shadow->pool);
		if (!first)
			first = p;
		seg[n].gref = p->gref;
		seg[n].offset = 0;
		seg[n].length = chunk;
		n++;
		len -= chunk;
	}
	return first;
}

/* Where the next byte goes in (or comes from) a run of pool pages. */
struct pool_cursor {
	struct pvusb_pool_page *p;
	size_t at;
};

static void copy_chunk(struct pool_cursor *c, void *buf, size_t len,
		       bool to_pool)
{
	while (len) {
		size_t n = min_t(size_t, len, PAGE_SIZE - c->at);
		void *here = page_address(c->p->page) + c->at;

		if (to_pool)
			memcpy(here, buf, n);
		else
			memcpy(buf, here, n);
		buf += n;
		len -= n;
		c->at += n;
		if (c->at == PAGE_SIZE) {
			c->p = list_next_entry(c->p, list);
			c->at = 0;
		}
	}
}

/*
 * Copies len bytes between urb's buffer and its data pages (the first on
 * shadow's list): through its scatter-gather list when it has one, as its
 * transfer_buffer is then NULL.
 */
static void copy_data(struct pvusb_shadow *shadow, struct urb *urb,
		      size_t len, bool to_pool)
{
	struct pool_cursor c = {
		.p = list_first_entry(&shadow->pool, struct pvusb_pool_page,
				      list),
	};
	struct sg_mapping_iter miter;

	if (!urb->num_sgs) {
		copy_chunk(&c, urb->transfer_buffer, len, to_pool);
		return;
	}
	sg_miter_start(&miter, urb->sg, urb->num_sgs, SG_MITER_ATOMIC |
		       (to_pool ? SG_MITER_FROM_SG : SG_MITER_TO_SG));
	while (len && sg_miter_next(&miter)) {
		size_t n = min(len, miter.length);

		copy_chunk(&c, miter.addr, n, to_pool);
		miter.consumed = n;
		len -= n;
	}
	sg_miter_stop(&miter);
}

/* Whether urb's scatter-gather list holds all of its transfer_buffer_length. */
static bool sg_covers(const struct urb *urb)
{
	struct scatterlist *sg;
	size_t total = 0;
	int i;

	for_each_sg(urb->sg, sg, urb->num_sgs, i)
		total += sg->length;
	return total >= urb->transfer_buffer_length;
}

/*
 * A bulk URB as one indirect request: its data pages are listed in a pool
 * page of their own, which seg[0] names, and u holds the whole length,
 * which buffer_length cannot. The backend maps that page once, as it does
 * the data pages.
 */
static int indirect_request(struct pvusb_hc *hc, struct pvusb_shadow *shadow,
			    size_t len)
{
	struct xenusb_urb_request *req = &shadow->req;
	unsigned int n = DIV_ROUND_UP(len, PAGE_SIZE);
	struct pvusb_pool_page *ind;

	BUILD_BUG_ON(PVUSB_MAX_INDIRECT_SEGMENTS > PVUSB_SEGS_PER_INDIRECT_PAGE);
	if (n > hc->max_indirect)
		return -E2BIG;
	ind = pool_get(hc);
	if (!ind)
		return -EAGAIN;
	if (!take_pages(hc, shadow, len, page_address(ind->page))) {
		list_add(&ind->list, &hc->pool_free);
		return -EAGAIN;
	}
	list_add_tail(&ind->list, &shadow->pool);
	req->transfer_flags |= PVUSB_F_INDIRECT;
	req->nr_buffer_segs = n;
	req->seg[0].gref = ind->gref;
	req->seg[0].offset = 0;
	req->seg[0].length = n * sizeof(struct xenusb_request_segment);
	put_unaligned_le32(len, req->u.ctrl);
	hc->indirect++;
	return 0;
}

/*
 * Through the pool, the data (copied in for OUT) from the first page's
 * offset 0 on: a bulk URB that needs more segments than a ring entry has,
 * or that comes as a scatter-gather list, as an indirect request; any
 * other with a segment per page of its data, then of its ISO descriptors.
 */
static int pooled_request(struct pvusb_hc *hc, struct pvusb_shadow *shadow,
			  struct urb *urb, size_t len, size_t iso_len)
{
	struct xenusb_urb_request *req = &shadow->req;
	unsigned int nr_buf = DIV_ROUND_UP(len, PAGE_SIZE);
	unsigned int nr_iso = DIV_ROUND_UP(iso_len, PAGE_SIZE);
	struct pool_cursor c = {};
	int ret;

	if (usb_pipebulk(urb->pipe) && hc->max_indirect &&
	    (urb->num_sgs || nr_buf > XENUSB_MAX_SEGMENTS_PER_REQUEST)) {
		ret = indirect_request(hc, shadow, len);
	} else if (nr_buf + nr_iso > XENUSB_MAX_SEGMENTS_PER_REQUEST) {
		ret = -E2BIG;
	} else if (!take_pages(hc, shadow, len, req->seg)) {
		ret = -EAGAIN;
	} else {
		req->nr_buffer_segs = nr_buf;
		ret = 0;
	}
	if (!ret && iso_len) {
		c.p = take_pages(hc, shadow, iso_len, req->seg + nr_buf);
		shadow->iso_desc = c.p;
		if (c.p) {
			copy_chunk(&c, urb->iso_frame_desc, iso_len, true);
			req->u.isoc.nr_frame_desc_segs = nr_iso;
		} else {
			ret = -EAGAIN;
		}
	}
	if (ret) {
		pool_put_all(hc, shadow);
		return ret;
	}
	if (usb_pipeout(urb->pipe))
		copy_data(shadow, urb, len, true);
	return 0;
}

/*
 * Fills the data segments of shadow->req for urb. Returns 0, -EAGAIN when
 * the pool has not enough pages free now (the URB waits for a completion),
 * or an error the URB fails with. A scatter-gather URB (only sent when the
 * bus allows it, so with persistent grants) is read through its list.
 */
int pvusb_grant_request(struct pvusb_hc *hc, struct pvusb_shadow *shadow,
			struct urb *urb)
{
	struct xenusb_urb_request *req = &shadow->req;
	bool in = usb_pipein(urb->pipe);
	bool iso = usb_pipeisoc(urb->pipe);
	size_t len = urb->transfer_buffer_length;
	size_t iso_len = iso ? urb->number_of_packets * ISO_DESC_SIZE : 0;
	unsigned int nr_buf, nr_iso;
	grant_ref_t head;

	req->nr_buffer_segs = 0;
	if (!len)
		return 0;
	if (urb->num_sgs ? !hc->persistent || !sg_covers(urb) :
	    !urb->transfer_buffer)
		return -EINVAL;
	if (hc->persistent)
		return pooled_request(hc, shadow, urb, len, iso_len);

	nr_buf = pages_spanned(urb->transfer_buffer, len);
	nr_iso = iso_len ? pages_spanned(urb->iso_frame_desc, iso_len) : 0;
	if (nr_buf + nr_iso > XENUSB_MAX_SEGMENTS_PER_REQUEST)
		return -E2BIG;
	if (gnttab_alloc_grant_references(nr_buf + nr_iso, &head))
		return -ENOMEM;
	grant_fresh(hc, &head, urb->transfer_buffer, len, !in, req->seg);
	if (iso_len)
		grant_fresh(hc, &head, urb->iso_frame_desc, iso_len, false,
			    req->seg + nr_buf);
	gnttab_free_grant_references(head);
	req->nr_buffer_segs = nr_buf;
	if (iso)
		req->u.isoc.nr_frame_desc_segs = nr_iso;
	return 0;
}

/* Copies the backend's per-packet results back (complete_submit checks them). */
static void iso_results_from_pool(struct pvusb_shadow *shadow, struct urb *urb)
{
	struct pvusb_pool_page *p = shadow->iso_desc;
	unsigned int i;

	/* A page holds a whole number of descriptors. */
	BUILD_BUG_ON(PAGE_SIZE % ISO_DESC_SIZE);
	for (i = 0; i < urb->number_of_packets; i++) {
		size_t at = i * ISO_DESC_SIZE % PAGE_SIZE;
		const struct usb_iso_packet_descriptor *d;
		struct usb_iso_packet_descriptor *mine = &urb->iso_frame_desc[i];

		if (i && !at)
			p = list_next_entry(p, list);
		d = page_address(p->page) + at;

		mine->actual_length = READ_ONCE(d->actual_length);
		mine->status = READ_ONCE(d->status);
	}
}

/*
 * Ends what pvusb_grant_request set up. With completed, an IN transfer's
 * data (up to actual_length, or the whole buffer for isochronous packets,
 * which sit at their offsets) is copied back from the pool into its
 * transfer_buffer or its scatter-gather list, and a fresh
 * grant the backend still holds is a protocol error: -EBUSY, with that
 * grant left for a later call. Without completed (the connection is gone),
 * such a grant is ended once the backend lets go of it.
 */
int pvusb_release_request(struct pvusb_hc *hc, struct pvusb_shadow *shadow,
			  struct urb *urb, bool completed)
{
	struct xenusb_urb_request *req = &shadow->req;
	unsigned int nr = req->nr_buffer_segs;
	unsigned int i;
	int ret = 0;

	if (xenusb_pipeisoc(req->pipe))
		nr += req->u.isoc.nr_frame_desc_segs;

	if (!hc->persistent) {
		for (i = 0; i < nr; i++) {
			grant_ref_t ref = req->seg[i].gref;

			if (ref == INVALID_GRANT_REF)
				continue;
			if (!completed) {
				gnttab_end_foreign_access(ref, NULL);
			} else if (!gnttab_try_end_foreign_access(ref)) {
				ret = -EBUSY;
				continue;
			}
			req->seg[i].gref = INVALID_GRANT_REF;
		}
		return ret;
	}

	if (completed && urb && usb_pipein(urb->pipe))
		copy_data(shadow, urb, usb_pipeisoc(urb->pipe) ?
			  urb->transfer_buffer_length : urb->actual_length,
			  false);
	if (completed && urb && shadow->iso_desc)
		iso_results_from_pool(shadow, urb);
	pool_put_all(hc, shadow);
	return 0;
}

/*
 * Ends the pool's grants. A page the backend still maps is freed by the
 * grant table once it lets go of it.
 */
void pvusb_pool_destroy(struct pvusb_hc *hc)
{
	struct pvusb_pool_page *p, *tmp;

	list_for_each_entry_safe(p, tmp, &hc->pool_free, list) {
		list_del(&p->list);
		gnttab_end_foreign_access(p->gref, p->page);
		kfree(p);
		hc->pool_pages--;
	}
}
