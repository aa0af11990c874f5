/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * pvusb-hcd: a PVUSB frontend (a USB host controller driver per virtual
 * controller) that negotiates what the backend offers: a multi-page URB
 * ring, persistent grants, indirect segments and a USB 3 root hub. The wire
 * format is Xen's usbif; the negotiated keys are described in
 * docs/pvusb-features.md.
 */
#ifndef PVUSB_HCD_H
#define PVUSB_HCD_H

#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/usb.h>
#include <linux/usb/hcd.h>
#include <linux/workqueue.h>
#include <xen/grant_table.h>
#include <xen/xenbus.h>
#include <xen/interface/io/usbif.h>

/* The largest URB ring this driver asks for: 2^4 pages, 256 entries. */
#define PVUSB_MAX_RING_PAGE_ORDER	4
#define PVUSB_MAX_RING_PAGES		BIT(PVUSB_MAX_RING_PAGE_ORDER)

/*
 * Pages this driver keeps granted for data when the backend takes
 * persistent grants: as many as usbdom keeps mapped for one frontend.
 */
#define PVUSB_MAX_POOL_PAGES		1024

/*
 * Data pages one indirect request may list: 1 MiB, the most a SuperSpeed
 * usb-storage command carries (2048 sectors). They fit in one indirect page.
 */
#define PVUSB_MAX_INDIRECT_SEGMENTS	256
#define PVUSB_SEGS_PER_INDIRECT_PAGE	\
	(PAGE_SIZE / sizeof(struct xenusb_request_segment))

/* transfer_flags of an indirect request: seg[0] names its list of segments. */
#define PVUSB_F_INDIRECT		0x8000

/* The speed code a backend reports for a SuperSpeed device (usb-ver 3). */
#define PVUSB_SPEED_SUPER		4

/* A USB 3 hub has at most 15 ports (USB 3.2, 10.15.2.1). */
#define PVUSB_MAX_USB3_PORTS		15

/* A root-hub port, as the hub driver sees it. */
struct pvusb_port {
	u32 status;		/* wPortStatus | wPortChange << 16 */
	unsigned long timeout;	/* end of a reset or a resume, in jiffies */
	bool resuming;
};

/* One root hub: USB 2 (or 1.1), or the USB 3 one of a usb-ver 3 controller. */
struct pvusb_roothub {
	struct pvusb_hc *hc;
	bool usb3;
	struct pvusb_port ports[XENUSB_MAX_PORTNR];
};

/* A page granted once to the backend and kept, for persistent grants. */
struct pvusb_pool_page {
	struct list_head list;	/* on pool_free, or on its request's shadow */
	struct page *page;
	grant_ref_t gref;
};

/* What an URB is to this driver. */
struct pvusb_urb {
	struct list_head list;	/* on pending_submit, pending_unlink or on_ring */
	struct urb *urb;
	int req_id;		/* its submit request's id, -1 before the ring */
	int unlink_id;		/* its unlink request's id, -1 until sent */
	int status;		/* to give back: the dequeue's, or the answer's */
	bool unlinked;
};

/* What this driver remembers of a request on the ring, by its id. */
struct pvusb_shadow {
	struct xenusb_urb_request req;
	struct pvusb_urb *purb;	/* NULL for an unlink request */
	/*
	 * Pool pages of this request (persistent grants), in order: its data
	 * from the first page's offset 0 on, then its ISO descriptors (the
	 * first of them is iso_desc) or its indirect page.
	 */
	struct list_head pool;
	struct pvusb_pool_page *iso_desc;
	bool in_flight;
	u16 next_free;
};

/* One virtual controller: a xenbus device "vusb". */
struct pvusb_hc {
	struct xenbus_device *xbdev;
	struct usb_hcd *hcd;		/* the primary (USB 2 or 1.1) one */
	struct usb_hcd *usb3_hcd;	/* usb-ver 3 only */
	struct pvusb_roothub *rh2;
	struct pvusb_roothub *rh3;
	int usb_ver;
	unsigned int num_ports;
	u8 port_speed[XENUSB_MAX_PORTNR];	/* XENUSB_SPEED_* per port */

	spinlock_t lock;	/* everything below, the ports and the rings */
	struct list_head pending_submit;
	struct list_head pending_unlink;
	struct list_head on_ring;

	/* Negotiated at connect. */
	unsigned int ring_order;
	bool persistent;
	unsigned int max_indirect;	/* 0: no indirect requests */

	struct xenusb_urb_front_ring urb_ring;
	struct xenusb_conn_front_ring conn_ring;
	grant_ref_t urb_ring_refs[PVUSB_MAX_RING_PAGES];
	grant_ref_t conn_ring_ref;
	evtchn_port_t evtchn;
	int irq;

	struct pvusb_shadow *shadow;	/* one per URB ring entry */
	unsigned int shadow_free;

	struct list_head pool_free;
	unsigned int pool_pages;	/* granted, free or in use */

	/* Set once the backend broke the protocol or went away. */
	bool error;
	bool dead;
	struct work_struct fatal_work;
	const char *fatal_reason;

	/* Counters, shown in the log at disconnect. */
	unsigned long urbs;
	unsigned long ring_full;
	unsigned long fresh_grants;
	unsigned long indirect;
};

static inline struct pvusb_roothub *pvusb_rh(struct usb_hcd *hcd)
{
	return *(struct pvusb_roothub **)hcd->hcd_priv;
}

static inline struct pvusb_hc *pvusb_hc(struct usb_hcd *hcd)
{
	return pvusb_rh(hcd)->hc;
}

/* roothub.c */
int pvusb_hub_status_data(struct usb_hcd *hcd, char *buf);
int pvusb_hub_control(struct usb_hcd *hcd, u16 type_req, u16 value,
		      u16 index, char *buf, u16 length);
int pvusb_port_event(struct pvusb_hc *hc, u8 portnum, u8 speed,
		     bool *changed2, bool *changed3);
void pvusb_poll_roothubs(struct pvusb_hc *hc, bool changed2, bool changed3);
bool pvusb_conn_responses(struct pvusb_hc *hc);
void pvusb_unplug_all(struct pvusb_hc *hc);

/* urb.c */
int pvusb_urb_enqueue(struct usb_hcd *hcd, struct urb *urb, gfp_t flags);
int pvusb_urb_dequeue(struct usb_hcd *hcd, struct urb *urb, int status);
bool pvusb_urb_responses(struct pvusb_hc *hc);
void pvusb_fail_all(struct pvusb_hc *hc);
void pvusb_set_error(struct pvusb_hc *hc, const char *reason);
int pvusb_shadow_init(struct pvusb_hc *hc);
void pvusb_shadow_free(struct pvusb_hc *hc);
int pvusb_urb_cache_init(void);
void pvusb_urb_cache_exit(void);

/* grants.c */
int pvusb_grant_request(struct pvusb_hc *hc, struct pvusb_shadow *shadow,
			struct urb *urb);
int pvusb_release_request(struct pvusb_hc *hc, struct pvusb_shadow *shadow,
			  struct urb *urb, bool completed);
void pvusb_pool_destroy(struct pvusb_hc *hc);

#endif /* PVUSB_HCD_H */
