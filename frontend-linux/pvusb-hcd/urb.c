// SPDX-License-Identifier: GPL-2.0-only
/*
 * URBs on the URB ring: each submitted URB is one request, each dequeued one
 * in flight an unlink request, and the backend answers both by id. URBs that
 * find the ring full (or the grant pool empty) wait in order and go out as
 * answers free room. Every answer is checked before it is believed.
 */
#include <linux/slab.h>
#include <xen/events.h>

#include "pvusb-hcd.h"

#define NO_ID	0xffff

static struct kmem_cache *purb_cache;

int pvusb_urb_cache_init(void)
{
	purb_cache = KMEM_CACHE(pvusb_urb, 0);
	return purb_cache ? 0 : -ENOMEM;
}

void pvusb_urb_cache_exit(void)
{
	kmem_cache_destroy(purb_cache);
}

int pvusb_shadow_init(struct pvusb_hc *hc)
{
	unsigned int n = RING_SIZE(&hc->urb_ring);
	unsigned int i;

	hc->shadow = kvcalloc(n, sizeof(*hc->shadow), GFP_KERNEL);
	if (!hc->shadow)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		INIT_LIST_HEAD(&hc->shadow[i].pool);
		hc->shadow[i].next_free = i + 1 < n ? i + 1 : NO_ID;
	}
	hc->shadow_free = 0;
	return 0;
}

void pvusb_shadow_free(struct pvusb_hc *hc)
{
	kvfree(hc->shadow);
	hc->shadow = NULL;
}

static int take_id(struct pvusb_hc *hc)
{
	unsigned int id = hc->shadow_free;

	if (id == NO_ID)
		return -1;
	hc->shadow_free = hc->shadow[id].next_free;
	return id;
}

static void put_id(struct pvusb_hc *hc, unsigned int id)
{
	struct pvusb_shadow *shadow = &hc->shadow[id];

	shadow->in_flight = false;
	shadow->purb = NULL;
	shadow->next_free = hc->shadow_free;
	hc->shadow_free = id;
}

/* The usbif pipe of urb: its root port, address, endpoint, direction, type. */
static u32 wire_pipe(const struct urb *urb)
{
	const struct usb_device *udev = urb->dev;
	u32 pipe;

	while (udev->parent && udev->parent->parent)
		udev = udev->parent;
	pipe = udev->portnum & XENUSB_PIPE_PORT_MASK;
	pipe |= usb_pipedevice(urb->pipe) << XENUSB_PIPE_DEV_SHIFT;
	pipe |= usb_pipeendpoint(urb->pipe) << XENUSB_PIPE_EP_SHIFT;
	if (usb_pipein(urb->pipe))
		pipe |= XENUSB_PIPE_DIR;
	switch (usb_pipetype(urb->pipe)) {
	case PIPE_ISOCHRONOUS:
		pipe |= XENUSB_PIPE_TYPE_ISOC << XENUSB_PIPE_TYPE_SHIFT;
		break;
	case PIPE_INTERRUPT:
		pipe |= XENUSB_PIPE_TYPE_INT << XENUSB_PIPE_TYPE_SHIFT;
		break;
	case PIPE_CONTROL:
		pipe |= XENUSB_PIPE_TYPE_CTRL << XENUSB_PIPE_TYPE_SHIFT;
		break;
	default:
		pipe |= XENUSB_PIPE_TYPE_BULK << XENUSB_PIPE_TYPE_SHIFT;
		break;
	}
	return pipe;
}

static bool ring_idle(struct pvusb_hc *hc)
{
	return hc->urb_ring.req_prod_pvt == hc->urb_ring.rsp_cons;
}

static void push(struct pvusb_hc *hc, unsigned int id)
{
	struct xenusb_urb_request *req;
	int notify;

	req = RING_GET_REQUEST(&hc->urb_ring, hc->urb_ring.req_prod_pvt);
	*req = hc->shadow[id].req;
	hc->urb_ring.req_prod_pvt++;
	hc->shadow[id].in_flight = true;
	RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&hc->urb_ring, notify);
	if (notify)
		notify_remote_via_irq(hc->irq);
}

/*
 * A cleared request with its id, for a ring slot that is free: the id, or
 * -EAGAIN when the ring has no room now.
 */
static int new_request(struct pvusb_hc *hc)
{
	int id;

	if (RING_FULL(&hc->urb_ring)) {
		hc->ring_full++;
		return -EAGAIN;
	}
	id = take_id(hc);
	if (id < 0)
		return -EAGAIN;
	memset(&hc->shadow[id].req, 0, sizeof(hc->shadow[id].req));
	hc->shadow[id].req.id = id;
	return id;
}

/* Puts purb's URB on the ring. -EAGAIN: no room now. */
static int send_submit(struct pvusb_hc *hc, struct pvusb_urb *purb)
{
	struct urb *urb = purb->urb;
	struct pvusb_shadow *shadow;
	struct xenusb_urb_request *req;
	int id, ret;

	id = new_request(hc);
	if (id < 0)
		return id;
	shadow = &hc->shadow[id];
	req = &shadow->req;
	req->pipe = wire_pipe(urb);
	if (urb->transfer_flags & URB_SHORT_NOT_OK)
		req->transfer_flags = XENUSB_SHORT_NOT_OK;
	/*
	 * Modulo 2^16, as xen-hcd sends it: a 64 KiB URB (16 full pages, which
	 * usb-storage sends) goes as 0, its length being its segments'. An
	 * indirect request carries its whole length in u as well.
	 */
	req->buffer_length = (u16)urb->transfer_buffer_length;
	switch (usb_pipetype(urb->pipe)) {
	case PIPE_CONTROL:
		memcpy(req->u.ctrl, urb->setup_packet, sizeof(req->u.ctrl));
		break;
	case PIPE_INTERRUPT:
		req->u.intr.interval = urb->interval;
		break;
	case PIPE_ISOCHRONOUS:
		req->u.isoc.interval = urb->interval;
		req->u.isoc.start_frame = urb->start_frame;
		req->u.isoc.number_of_packets = urb->number_of_packets;
		break;
	}
	ret = pvusb_grant_request(hc, shadow, urb);
	if (ret) {
		put_id(hc, id);
		/* Nothing in flight would give pool pages back. */
		if (ret == -EAGAIN && ring_idle(hc))
			ret = -ENOMEM;
		return ret;
	}
	shadow->purb = purb;
	purb->req_id = id;
	hc->urbs++;
	push(hc, id);
	return 0;
}

/* Asks the backend to cancel purb's request. -EAGAIN: no room now. */
static int send_unlink(struct pvusb_hc *hc, struct pvusb_urb *purb)
{
	struct xenusb_urb_request *req;
	int id;

	id = new_request(hc);
	if (id < 0)
		return id;
	req = &hc->shadow[id].req;
	req->pipe = hc->shadow[purb->req_id].req.pipe | XENUSB_PIPE_UNLINK;
	req->u.unlink.unlink_id = purb->req_id;
	purb->unlink_id = id;
	push(hc, id);
	return 0;
}

/* Moves purb to done, to be given back with status once the lock is free. */
static void finish(struct pvusb_urb *purb, int status, struct list_head *done)
{
	struct urb *urb = purb->urb;

	purb->status = status;
	list_move_tail(&purb->list, done);
	usb_hcd_unlink_urb_from_ep(bus_to_hcd(urb->dev->bus), urb);
}

static void give_back(struct list_head *done)
{
	struct pvusb_urb *purb, *tmp;

	list_for_each_entry_safe(purb, tmp, done, list) {
		struct urb *urb = purb->urb;
		int status = purb->status;

		list_del(&purb->list);
		urb->hcpriv = NULL;
		kmem_cache_free(purb_cache, purb);
		usb_hcd_giveback_urb(bus_to_hcd(urb->dev->bus), urb, status);
	}
}

/* Sends what waited: unlinks first, then submissions, in order. */
static void kick(struct pvusb_hc *hc, struct list_head *done)
{
	struct pvusb_urb *purb, *tmp;
	int ret;

	list_for_each_entry_safe(purb, tmp, &hc->pending_unlink, list) {
		if (send_unlink(hc, purb))
			return;
		list_move_tail(&purb->list, &hc->on_ring);
	}
	list_for_each_entry_safe(purb, tmp, &hc->pending_submit, list) {
		ret = send_submit(hc, purb);
		if (ret == -EAGAIN)
			return;
		if (ret)
			finish(purb, ret, done);
		else
			list_move_tail(&purb->list, &hc->on_ring);
	}
}

int pvusb_urb_enqueue(struct usb_hcd *hcd, struct urb *urb, gfp_t flags)
{
	struct pvusb_hc *hc = pvusb_hc(hcd);
	struct pvusb_urb *purb;
	unsigned long irqflags;
	int ret;

	purb = kmem_cache_zalloc(purb_cache, flags);
	if (!purb)
		return -ENOMEM;
	purb->urb = urb;
	purb->req_id = -1;
	purb->unlink_id = -1;
	INIT_LIST_HEAD(&purb->list);

	spin_lock_irqsave(&hc->lock, irqflags);
	if (hc->error || hc->dead || !hc->shadow) {
		ret = -ESHUTDOWN;
		goto free;
	}
	ret = usb_hcd_link_urb_to_ep(hcd, urb);
	if (ret)
		goto free;
	urb->hcpriv = purb;
	ret = list_empty(&hc->pending_submit) ? send_submit(hc, purb) : -EAGAIN;
	if (!ret) {
		list_add_tail(&purb->list, &hc->on_ring);
	} else if (ret == -EAGAIN) {
		list_add_tail(&purb->list, &hc->pending_submit);
		ret = 0;
	} else {
		usb_hcd_unlink_urb_from_ep(hcd, urb);
		urb->hcpriv = NULL;
		goto free;
	}
	spin_unlock_irqrestore(&hc->lock, irqflags);
	return 0;

free:
	spin_unlock_irqrestore(&hc->lock, irqflags);
	kmem_cache_free(purb_cache, purb);
	return ret;
}

int pvusb_urb_dequeue(struct usb_hcd *hcd, struct urb *urb, int status)
{
	struct pvusb_hc *hc = pvusb_hc(hcd);
	struct pvusb_urb *purb;
	unsigned long flags;
	LIST_HEAD(done);
	int ret;

	spin_lock_irqsave(&hc->lock, flags);
	ret = usb_hcd_check_unlink_urb(hcd, urb, status);
	purb = urb->hcpriv;
	if (ret || !purb || purb->unlinked)
		goto unlock;
	purb->unlinked = true;
	purb->status = status;
	if (purb->req_id < 0)
		finish(purb, status, &done);
	else if (hc->error || hc->dead)
		; /* Given back when the connection is torn down. */
	else if (!list_empty(&hc->pending_unlink) || send_unlink(hc, purb))
		list_move_tail(&purb->list, &hc->pending_unlink);
unlock:
	spin_unlock_irqrestore(&hc->lock, flags);
	give_back(&done);
	return ret;
}

static int translate_status(int status)
{
	switch (status) {
	case XENUSB_STATUS_OK:
		return 0;
	case XENUSB_STATUS_NODEV:
		return -ENODEV;
	case XENUSB_STATUS_INVAL:
		return -EINVAL;
	case XENUSB_STATUS_STALL:
		return -EPIPE;
	case XENUSB_STATUS_IOERROR:
		return -EPROTO;
	case XENUSB_STATUS_BABBLE:
		return -EOVERFLOW;
	case -EREMOTEIO:
		return -EREMOTEIO;
	default:
		return -ESHUTDOWN;
	}
}

/* A submit request's answer: the URB's results, each within its bounds. */
static int complete_submit(struct pvusb_hc *hc, struct pvusb_shadow *shadow,
			   const struct xenusb_urb_response *rsp,
			   struct list_head *done)
{
	struct pvusb_urb *purb = shadow->purb;
	struct urb *urb = purb->urb;

	urb->actual_length = clamp_t(s32, rsp->actual_length, 0,
				     urb->transfer_buffer_length);
	if (usb_pipeisoc(urb->pipe)) {
		urb->start_frame = rsp->start_frame;
		urb->error_count = clamp_t(s32, rsp->error_count, 0,
					   urb->number_of_packets);
	}
	if (pvusb_release_request(hc, shadow, urb, true))
		return -EBUSY;
	/*
	 * Each packet's length within the packet, whether the backend wrote the
	 * descriptors in place (fresh grants) or in the pool (copied back above).
	 */
	if (usb_pipeisoc(urb->pipe)) {
		unsigned int i;

		for (i = 0; i < urb->number_of_packets; i++)
			urb->iso_frame_desc[i].actual_length =
				min(urb->iso_frame_desc[i].actual_length,
				    urb->iso_frame_desc[i].length);
	}
	finish(purb, purb->unlinked ? purb->status :
	       translate_status(rsp->status), done);
	return 0;
}

/*
 * Takes the backend's answers. Returns true when more may have come in
 * meanwhile.
 */
bool pvusb_urb_responses(struct pvusb_hc *hc)
{
	struct xenusb_urb_response rsp;
	unsigned long flags;
	LIST_HEAD(done);
	RING_IDX i, rp;
	int more = 0;

	spin_lock_irqsave(&hc->lock, flags);
	if (hc->error || hc->dead || !hc->shadow)
		goto unlock;
	rp = READ_ONCE(hc->urb_ring.sring->rsp_prod);
	if (RING_RESPONSE_PROD_OVERFLOW(&hc->urb_ring, rp)) {
		pvusb_set_error(hc, "urb_rsp_prod_overflow");
		goto unlock;
	}
	virt_rmb(); /* The answers up to rp, after rp itself. */
	for (i = hc->urb_ring.rsp_cons; i != rp; i++) {
		struct pvusb_shadow *shadow;

		RING_COPY_RESPONSE(&hc->urb_ring, i, &rsp);
		if (rsp.id >= RING_SIZE(&hc->urb_ring) ||
		    !hc->shadow[rsp.id].in_flight) {
			pvusb_set_error(hc, "urb_rsp_bad_id");
			break;
		}
		shadow = &hc->shadow[rsp.id];
		if (shadow->purb &&
		    complete_submit(hc, shadow, &rsp, &done)) {
			pvusb_set_error(hc, "grant_still_in_use");
			break;
		}
		put_id(hc, rsp.id);
	}
	hc->urb_ring.rsp_cons = i;
	if (hc->error)
		goto unlock;
	kick(hc, &done);
	if (i != hc->urb_ring.req_prod_pvt)
		RING_FINAL_CHECK_FOR_RESPONSES(&hc->urb_ring, more);
	else
		hc->urb_ring.sring->rsp_event = i + 1;
unlock:
	spin_unlock_irqrestore(&hc->lock, flags);
	give_back(&done);
	return more;
}

/*
 * The connection is gone: every URB is given back (its dequeue status, or
 * -ESHUTDOWN), its grants ended, and no new one is taken.
 */
void pvusb_fail_all(struct pvusb_hc *hc)
{
	struct pvusb_urb *purb, *tmp;
	unsigned long flags;
	LIST_HEAD(done);
	unsigned int i;

	spin_lock_irqsave(&hc->lock, flags);
	hc->dead = true;
	list_splice_tail_init(&hc->pending_unlink, &hc->on_ring);
	list_for_each_entry_safe(purb, tmp, &hc->on_ring, list) {
		pvusb_release_request(hc, &hc->shadow[purb->req_id], purb->urb,
				      false);
		finish(purb, purb->unlinked ? purb->status : -ESHUTDOWN, &done);
	}
	list_for_each_entry_safe(purb, tmp, &hc->pending_submit, list)
		finish(purb, purb->unlinked ? purb->status : -ESHUTDOWN, &done);
	if (hc->shadow)
		for (i = 0; i < RING_SIZE(&hc->urb_ring); i++)
			hc->shadow[i].in_flight = false;
	spin_unlock_irqrestore(&hc->lock, flags);
	give_back(&done);
}
