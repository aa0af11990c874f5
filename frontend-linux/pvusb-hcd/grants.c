// SPDX-License-Identifier: GPL-2.0-only
/*
 * How an URB's data reaches the backend: fresh grants of the URB's own
 * pages (the stock protocol), or pages of a pool granted once and kept
 * (persistent grants), which the data is copied through.
 */
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
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
	unsigned int i;

	for (i = 0; i < shadow->nr_pool; i++)
		list_add(&shadow->pool[i]->list, &hc->pool_free);
	shadow->nr_pool = 0;
}

/*
 * Takes pool pages for len bytes, copying the bytes in when copy_in:
 * one segment per page, each from offset 0.
 */
static int grant_pooled(struct pvusb_hc *hc, struct pvusb_shadow *shadow,
			const void *src, size_t len, bool copy_in,
			struct xenusb_request_segment *seg)
{
	unsigned int n = 0;

	while (len) {
		unsigned int chunk = min_t(size_t, len, PAGE_SIZE);
		struct pvusb_pool_page *p = pool_get(hc);

		if (!p)
			return -EAGAIN;
		shadow->pool[shadow->nr_pool++] = p;
		if (copy_in)
			memcpy(page_address(p->page), src, chunk);
		seg[n].gref = p->gref;
		seg[n].offset = 0;
		seg[n].length = chunk;
		n++;
		src += chunk;
		len -= chunk;
	}
	return n;
}

/*
 * Fills the data segments of shadow->req for urb. Returns 0, -EAGAIN when
 * the pool has no page free now (the URB waits for a completion), or an
 * error the URB fails with.
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
	int n;

	req->nr_buffer_segs = 0;
	shadow->nr_pool = 0;
	shadow->iso_pool = 0;
	if (!len)
		return 0;
	if (!urb->transfer_buffer)
		return -EINVAL;

	if (hc->persistent) {
		nr_buf = DIV_ROUND_UP(len, PAGE_SIZE);
		nr_iso = DIV_ROUND_UP(iso_len, PAGE_SIZE);
	} else {
		nr_buf = pages_spanned(urb->transfer_buffer, len);
		nr_iso = iso_len ? pages_spanned(urb->iso_frame_desc, iso_len) : 0;
	}
	if (nr_buf + nr_iso > XENUSB_MAX_SEGMENTS_PER_REQUEST)
		return -E2BIG;

	if (hc->persistent) {
		n = grant_pooled(hc, shadow, urb->transfer_buffer, len, !in,
				 req->seg);
		if (n < 0)
			goto pool_short;
		shadow->iso_pool = shadow->nr_pool;
		if (iso_len) {
			n = grant_pooled(hc, shadow, urb->iso_frame_desc,
					 iso_len, true, req->seg + nr_buf);
			if (n < 0)
				goto pool_short;
		}
	} else {
		if (gnttab_alloc_grant_references(nr_buf + nr_iso, &head))
			return -ENOMEM;
		grant_fresh(hc, &head, urb->transfer_buffer, len, !in, req->seg);
		if (iso_len)
			grant_fresh(hc, &head, urb->iso_frame_desc, iso_len,
				    false, req->seg + nr_buf);
		gnttab_free_grant_references(head);
	}
	req->nr_buffer_segs = nr_buf;
	if (iso)
		req->u.isoc.nr_frame_desc_segs = nr_iso;
	return 0;

pool_short:
	pool_put_all(hc, shadow);
	return -EAGAIN;
}

/* Copies the backend's per-packet results back (complete_submit checks them). */
static void iso_results_from_pool(struct pvusb_shadow *shadow, struct urb *urb)
{
	unsigned int i;

	for (i = 0; i < urb->number_of_packets; i++) {
		size_t at = i * ISO_DESC_SIZE;
		struct pvusb_pool_page *p = shadow->pool[shadow->iso_pool +
							 at / PAGE_SIZE];
		const struct usb_iso_packet_descriptor *d =
			page_address(p->page) + at % PAGE_SIZE;
		struct usb_iso_packet_descriptor *mine = &urb->iso_frame_desc[i];

		mine->actual_length = READ_ONCE(d->actual_length);
		mine->status = READ_ONCE(d->status);
	}
}

/*
 * Ends what pvusb_grant_request set up. With completed, an IN transfer's
 * data (up to actual_length, or the whole buffer for isochronous packets,
 * which sit at their offsets) is copied back from the pool, and a fresh
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

	if (completed && urb && usb_pipein(urb->pipe) && shadow->iso_pool) {
		size_t len = usb_pipeisoc(urb->pipe) ?
			urb->transfer_buffer_length : urb->actual_length;
		void *dst = urb->transfer_buffer;

		for (i = 0; len; i++) {
			size_t chunk = min_t(size_t, len, PAGE_SIZE);

			memcpy(dst, page_address(shadow->pool[i]->page), chunk);
			dst += chunk;
			len -= chunk;
		}
	}
	if (completed && urb && usb_pipeisoc(urb->pipe) &&
	    shadow->nr_pool > shadow->iso_pool)
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
