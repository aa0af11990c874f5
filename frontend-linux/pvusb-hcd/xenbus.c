// SPDX-License-Identifier: GPL-2.0-only
/*
 * The xenbus side: one virtual controller per "vusb" device, its root hubs
 * made at probe, its rings and features negotiated when the backend waits,
 * and everything taken back when the backend closes or the device goes.
 *
 * Log lines are "event=<name> key=value ...", as usbdom's own
 * (docs/log-events.md).
 */
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <xen/events.h>
#include <xen/page.h>
#include <xen/xen.h>

#include "pvusb-hcd.h"

static unsigned int max_ring_page_order = PVUSB_MAX_RING_PAGE_ORDER;
module_param(max_ring_page_order, uint, 0644);
MODULE_PARM_DESC(max_ring_page_order,
		 "Largest URB ring to ask for, as a power of two of pages (0-4)");

static bool persistent_grants = true;
module_param(persistent_grants, bool, 0644);
MODULE_PARM_DESC(persistent_grants,
		 "Use persistent grants where the backend offers them");

static unsigned int max_indirect_segments = PVUSB_MAX_INDIRECT_SEGMENTS;
module_param(max_indirect_segments, uint, 0644);
MODULE_PARM_DESC(max_indirect_segments,
		 "Most data pages of one indirect bulk request (up to 256; 16 or less: none)");

static void pvusb_fatal_work(struct work_struct *work)
{
	struct pvusb_hc *hc = container_of(work, struct pvusb_hc, fatal_work);

	dev_err(&hc->xbdev->dev, "event=backend_error reason=%s\n",
		hc->fatal_reason);
	xenbus_dev_fatal(hc->xbdev, -EPROTO, "backend error: %s",
			 hc->fatal_reason);
}

/*
 * The backend broke the protocol: nothing more is taken from it, and the
 * connection is closed (from process context) so that it lets go of every
 * grant before the URBs are given back.
 */
void pvusb_set_error(struct pvusb_hc *hc, const char *reason)
{
	if (hc->error)
		return;
	hc->error = true;
	hc->fatal_reason = reason;
	schedule_work(&hc->fatal_work);
}

static irqreturn_t pvusb_interrupt(int irq, void *dev_id)
{
	struct pvusb_hc *hc = dev_id;
	unsigned int eoiflag = XEN_EOI_FLAG_SPURIOUS;

	if (RING_HAS_UNCONSUMED_RESPONSES(&hc->urb_ring) ||
	    RING_HAS_UNCONSUMED_RESPONSES(&hc->conn_ring))
		eoiflag = 0;
	while (pvusb_urb_responses(hc) | pvusb_conn_responses(hc))
		cond_resched();
	xen_irq_lateeoi(irq, eoiflag);
	return IRQ_HANDLED;
}

static void pvusb_destroy_rings(struct pvusb_hc *hc)
{
	if (hc->irq > 0)
		unbind_from_irqhandler(hc->irq, hc);
	hc->irq = 0;
	if (hc->urb_ring.sring)
		xenbus_teardown_ring((void **)&hc->urb_ring.sring,
				     1U << hc->ring_order, hc->urb_ring_refs);
	if (hc->conn_ring.sring)
		xenbus_teardown_ring((void **)&hc->conn_ring.sring, 1,
				     &hc->conn_ring_ref);
	pvusb_pool_destroy(hc);
	pvusb_shadow_free(hc);
}

static int pvusb_setup_rings(struct pvusb_hc *hc)
{
	struct xenbus_device *dev = hc->xbdev;
	unsigned int pages = 1U << hc->ring_order;
	void *sring;
	int err;

	err = xenbus_setup_ring(dev, GFP_NOIO | __GFP_HIGH, &sring, pages,
				hc->urb_ring_refs);
	if (err)
		return err;
	XEN_FRONT_RING_INIT(&hc->urb_ring, (struct xenusb_urb_sring *)sring,
			    pages * XEN_PAGE_SIZE);
	err = xenbus_setup_ring(dev, GFP_NOIO | __GFP_HIGH, &sring, 1,
				&hc->conn_ring_ref);
	if (err)
		goto fail;
	XEN_FRONT_RING_INIT(&hc->conn_ring, (struct xenusb_conn_sring *)sring,
			    XEN_PAGE_SIZE);
	err = pvusb_shadow_init(hc);
	if (err)
		goto fail;
	err = xenbus_alloc_evtchn(dev, &hc->evtchn);
	if (err)
		goto fail;
	err = bind_evtchn_to_irq_lateeoi(hc->evtchn);
	if (err <= 0) {
		xenbus_free_evtchn(dev, hc->evtchn);
		goto fail;
	}
	hc->irq = err;
	err = request_threaded_irq(hc->irq, NULL, pvusb_interrupt, IRQF_ONESHOT,
				   "pvusb-hcd", hc);
	if (err) {
		unbind_from_irqhandler(hc->irq, NULL);
		hc->irq = 0;
		goto fail;
	}
	return 0;

fail:
	pvusb_destroy_rings(hc);
	return err;
}

/* Writes the rings, the channel and the features taken, in one transaction. */
static int pvusb_publish(struct pvusb_hc *hc)
{
	struct xenbus_device *dev = hc->xbdev;
	struct xenbus_transaction xbt;
	const char *what;
	unsigned int i;
	char key[16];
	int err;

again:
	err = xenbus_transaction_start(&xbt);
	if (err) {
		xenbus_dev_fatal(dev, err, "starting transaction");
		return err;
	}
	if (hc->ring_order) {
		what = "writing ring-page-order";
		err = xenbus_printf(xbt, dev->nodename, "ring-page-order", "%u",
				    hc->ring_order);
		for (i = 0; !err && i < (1U << hc->ring_order); i++) {
			snprintf(key, sizeof(key), "urb-ring-ref%u", i);
			what = "writing urb-ring-ref<n>";
			err = xenbus_printf(xbt, dev->nodename, key, "%u",
					    hc->urb_ring_refs[i]);
		}
	} else {
		what = "writing urb-ring-ref";
		err = xenbus_printf(xbt, dev->nodename, "urb-ring-ref", "%u",
				    hc->urb_ring_refs[0]);
	}
	if (!err) {
		what = "writing conn-ring-ref";
		err = xenbus_printf(xbt, dev->nodename, "conn-ring-ref", "%u",
				    hc->conn_ring_ref);
	}
	if (!err) {
		what = "writing event-channel";
		err = xenbus_printf(xbt, dev->nodename, "event-channel", "%u",
				    hc->evtchn);
	}
	if (!err && hc->persistent) {
		what = "writing feature-persistent";
		err = xenbus_printf(xbt, dev->nodename, "feature-persistent",
				    "%u", 1);
	}
	if (err) {
		xenbus_transaction_end(xbt, 1);
		xenbus_dev_fatal(dev, err, "%s", what);
		return err;
	}
	err = xenbus_transaction_end(xbt, 0);
	if (err == -EAGAIN)
		goto again;
	if (err)
		xenbus_dev_fatal(dev, err, "completing transaction");
	return err;
}

/*
 * With indirect requests the bus takes one scatter-gather URB per transfer
 * (usb_sg_init(), usb-storage, uas) instead of one per entry, of any
 * layout: its data is copied into pool pages anyway. Set before any port
 * connects, so a device's drivers see it from their probe on.
 */
static void pvusb_set_sg(struct pvusb_hc *hc)
{
	struct usb_hcd *hcds[] = { hc->hcd, hc->usb3_hcd };
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(hcds); i++) {
		if (!hcds[i])
			continue;
		hcds[i]->self.sg_tablesize = hc->max_indirect;
		hcds[i]->self.no_sg_constraint = hc->max_indirect != 0;
	}
}

/* The backend waits for us: take what it offers, within this module's limits. */
static int pvusb_connect(struct pvusb_hc *hc)
{
	struct xenbus_device *dev = hc->xbdev;
	unsigned int offered, i;
	int notify, err;

	offered = xenbus_read_unsigned(dev->otherend, "max-ring-page-order", 0);
	hc->ring_order = min3(offered, max_ring_page_order,
			      (unsigned int)PVUSB_MAX_RING_PAGE_ORDER);
	hc->persistent = persistent_grants &&
		xenbus_read_unsigned(dev->otherend, "feature-persistent", 0) == 1;
	offered = xenbus_read_unsigned(dev->otherend,
				       "feature-max-indirect-segments", 0);
	hc->max_indirect = min3(offered, max_indirect_segments,
				(unsigned int)PVUSB_MAX_INDIRECT_SEGMENTS);
	/*
	 * An indirect request's data and list go through the pool, and an
	 * offer of 16 segments or fewer is no more than a ring entry holds.
	 */
	if (!hc->persistent ||
	    hc->max_indirect <= XENUSB_MAX_SEGMENTS_PER_REQUEST)
		hc->max_indirect = 0;
	pvusb_set_sg(hc);

	err = pvusb_setup_rings(hc);
	if (err) {
		xenbus_dev_fatal(dev, err, "setting up the rings");
		return err;
	}
	err = pvusb_publish(hc);
	if (err) {
		pvusb_destroy_rings(hc);
		return err;
	}
	/* Every conn-ring request out at once: the backend answers one per event. */
	for (i = 0; i < RING_SIZE(&hc->conn_ring); i++)
		RING_GET_REQUEST(&hc->conn_ring, i)->id = i;
	hc->conn_ring.req_prod_pvt = i;
	RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&hc->conn_ring, notify);
	if (notify)
		notify_remote_via_irq(hc->irq);

	dev_info(&dev->dev,
		 "event=hcd_connected backend_id=%d usb_ver=%d ports=%u urb_ring_pages=%u urb_ring_size=%u persistent=%s indirect_segments=%u\n",
		 dev->otherend_id, hc->usb_ver, hc->num_ports,
		 1U << hc->ring_order, RING_SIZE(&hc->urb_ring),
		 hc->persistent ? "yes" : "no", hc->max_indirect);
	return 0;
}

/* Takes everything back from the backend; the root hubs stay until removal. */
static void pvusb_disconnect(struct pvusb_hc *hc, const char *reason)
{
	if (!hc->shadow)
		return;
	pvusb_fail_all(hc);
	pvusb_unplug_all(hc);
	dev_info(&hc->xbdev->dev,
		 "event=hcd_disconnected reason=%s urbs=%lu ring_full=%lu fresh_grants=%lu pool_pages=%u indirect=%lu\n",
		 reason, hc->urbs, hc->ring_full, hc->fresh_grants,
		 hc->pool_pages, hc->indirect);
	pvusb_destroy_rings(hc);
}

static void pvusb_backend_changed(struct xenbus_device *dev,
				  enum xenbus_state backend_state)
{
	struct pvusb_hc *hc = dev_get_drvdata(&dev->dev);

	switch (backend_state) {
	case XenbusStateInitWait:
	case XenbusStateInitialised:
	case XenbusStateConnected:
		if (dev->state != XenbusStateInitialising)
			break;
		if (!pvusb_connect(hc))
			xenbus_switch_state(dev, XenbusStateConnected);
		break;
	case XenbusStateClosed:
		if (dev->state == XenbusStateClosed)
			break;
		fallthrough;	/* The backend's Closing was missed. */
	case XenbusStateClosing:
		pvusb_disconnect(hc, "backend_closing");
		xenbus_frontend_closed(dev);
		break;
	default:
		break;
	}
}

static int pvusb_setup(struct usb_hcd *hcd)
{
	struct pvusb_roothub *rh = pvusb_rh(hcd);

	if (rh->usb3) {
		hcd->speed = HCD_USB3;
		hcd->self.root_hub->speed = USB_SPEED_SUPER;
	} else if (rh->hc->usb_ver == XENUSB_VER_USB30) {
		hcd->speed = HCD_USB2;
		hcd->self.root_hub->speed = USB_SPEED_HIGH;
	}
	hcd->has_tt = hcd->speed == HCD_USB2;
	return 0;
}

static int pvusb_start(struct usb_hcd *hcd)
{
	hcd->uses_new_polling = 1;
	hcd->state = HC_STATE_RUNNING;
	return 0;
}

static void pvusb_stop(struct usb_hcd *hcd)
{
	pvusb_fail_all(pvusb_hc(hcd));
	hcd->state = HC_STATE_HALT;
}

static int pvusb_get_frame_number(struct usb_hcd *hcd)
{
	/* usbif has no frame counter to read. */
	return 0;
}

#ifdef CONFIG_PM
static int pvusb_bus_suspend(struct usb_hcd *hcd)
{
	return 0;
}

static int pvusb_bus_resume(struct usb_hcd *hcd)
{
	return 0;
}
#endif

#define PVUSB_HC_DRIVER(_desc, _flags)				\
	{							\
		.description = "pvusb-hcd",			\
		.product_desc = _desc,				\
		.hcd_priv_size = sizeof(struct pvusb_roothub *),	\
		.flags = _flags,				\
		.reset = pvusb_setup,				\
		.start = pvusb_start,				\
		.stop = pvusb_stop,				\
		.urb_enqueue = pvusb_urb_enqueue,		\
		.urb_dequeue = pvusb_urb_dequeue,		\
		.get_frame_number = pvusb_get_frame_number,	\
		.hub_status_data = pvusb_hub_status_data,	\
		.hub_control = pvusb_hub_control,		\
		PVUSB_PM_OPS					\
	}

#ifdef CONFIG_PM
#define PVUSB_PM_OPS .bus_suspend = pvusb_bus_suspend, .bus_resume = pvusb_bus_resume,
#else
#define PVUSB_PM_OPS
#endif

static const struct hc_driver pvusb_usb11_driver =
	PVUSB_HC_DRIVER("PVUSB USB 1.1 virtual host controller", HCD_USB11);
static const struct hc_driver pvusb_usb2_driver =
	PVUSB_HC_DRIVER("PVUSB USB 2.0 virtual host controller", HCD_USB2);
static const struct hc_driver pvusb_usb3_driver =
	PVUSB_HC_DRIVER("PVUSB USB 3 virtual host controller",
			HCD_USB3 | HCD_SHARED);

static struct usb_hcd *pvusb_add_hcd(struct pvusb_hc *hc,
				     const struct hc_driver *driver,
				     struct pvusb_roothub *rh,
				     struct usb_hcd *primary)
{
	struct device *dev = &hc->xbdev->dev;
	struct usb_hcd *hcd;
	int err;

	if (primary)
		hcd = usb_create_shared_hcd(driver, dev, dev_name(dev), primary);
	else
		hcd = usb_create_hcd(driver, dev, dev_name(dev));
	if (!hcd)
		return ERR_PTR(-ENOMEM);
	*(struct pvusb_roothub **)hcd->hcd_priv = rh;
	err = usb_add_hcd(hcd, 0, 0);
	if (err) {
		usb_put_hcd(hcd);
		return ERR_PTR(err);
	}
	return hcd;
}

static void pvusb_remove_hcds(struct pvusb_hc *hc)
{
	if (hc->usb3_hcd) {
		usb_remove_hcd(hc->usb3_hcd);
		usb_put_hcd(hc->usb3_hcd);
		hc->usb3_hcd = NULL;
	}
	if (hc->hcd) {
		usb_remove_hcd(hc->hcd);
		usb_put_hcd(hc->hcd);
		hc->hcd = NULL;
	}
}

static void pvusb_free(struct pvusb_hc *hc)
{
	kfree(hc->rh2);
	kfree(hc->rh3);
	kfree(hc);
}

/* Reads num-ports and usb-ver as the toolstack wrote them, within range. */
static int pvusb_read_config(struct pvusb_hc *hc)
{
	struct xenbus_device *dev = hc->xbdev;
	unsigned int ports, ver;

	if (xenbus_scanf(XBT_NIL, dev->otherend, "num-ports", "%u", &ports) != 1 ||
	    ports < 1 || ports > XENUSB_MAX_PORTNR) {
		xenbus_dev_fatal(dev, -EINVAL, "num-ports missing or not 1-31");
		return -EINVAL;
	}
	if (xenbus_scanf(XBT_NIL, dev->otherend, "usb-ver", "%u", &ver) != 1 ||
	    ver < XENUSB_VER_USB11 || ver > XENUSB_VER_USB30) {
		xenbus_dev_fatal(dev, -EINVAL, "usb-ver missing or not 1-3");
		return -EINVAL;
	}
	if (ver == XENUSB_VER_USB30 && ports > PVUSB_MAX_USB3_PORTS) {
		xenbus_dev_fatal(dev, -EINVAL,
				 "a USB 3 controller has at most 15 ports");
		return -EINVAL;
	}
	hc->num_ports = ports;
	hc->usb_ver = ver;
	return 0;
}

static int pvusb_probe(struct xenbus_device *dev,
		       const struct xenbus_device_id *id)
{
	const struct hc_driver *driver;
	struct usb_hcd *hcd;
	struct pvusb_hc *hc;
	int err;

	if (usb_disabled())
		return -ENODEV;
	hc = kzalloc(sizeof(*hc), GFP_KERNEL);
	if (!hc)
		return -ENOMEM;
	hc->xbdev = dev;
	spin_lock_init(&hc->lock);
	INIT_LIST_HEAD(&hc->pending_submit);
	INIT_LIST_HEAD(&hc->pending_unlink);
	INIT_LIST_HEAD(&hc->on_ring);
	INIT_LIST_HEAD(&hc->pool_free);
	INIT_WORK(&hc->fatal_work, pvusb_fatal_work);
	err = pvusb_read_config(hc);
	if (err)
		goto free;

	err = -ENOMEM;
	hc->rh2 = kzalloc(sizeof(*hc->rh2), GFP_KERNEL);
	if (!hc->rh2)
		goto free;
	hc->rh2->hc = hc;
	if (hc->usb_ver == XENUSB_VER_USB30) {
		hc->rh3 = kzalloc(sizeof(*hc->rh3), GFP_KERNEL);
		if (!hc->rh3)
			goto free;
		hc->rh3->hc = hc;
		hc->rh3->usb3 = true;
	}

	switch (hc->usb_ver) {
	case XENUSB_VER_USB11:
		driver = &pvusb_usb11_driver;
		break;
	case XENUSB_VER_USB20:
		driver = &pvusb_usb2_driver;
		break;
	default:
		driver = &pvusb_usb3_driver;
		break;
	}
	hcd = pvusb_add_hcd(hc, driver, hc->rh2, NULL);
	if (IS_ERR(hcd)) {
		err = PTR_ERR(hcd);
		goto fatal;
	}
	hc->hcd = hcd;
	if (hc->rh3) {
		hcd = pvusb_add_hcd(hc, driver, hc->rh3, hc->hcd);
		if (IS_ERR(hcd)) {
			err = PTR_ERR(hcd);
			pvusb_remove_hcds(hc);
			goto fatal;
		}
		hc->usb3_hcd = hcd;
	}
	/* After usb_create_hcd(), which sets the device's driver data to its hcd. */
	dev_set_drvdata(&dev->dev, hc);
	return 0;

fatal:
	xenbus_dev_fatal(dev, err, "adding the USB host controller");
	dev_set_drvdata(&dev->dev, NULL);
free:
	pvusb_free(hc);
	return err;
}

static void pvusb_remove(struct xenbus_device *dev)
{
	struct pvusb_hc *hc = dev_get_drvdata(&dev->dev);

	pvusb_disconnect(hc, "device_removed");
	pvusb_remove_hcds(hc);
	cancel_work_sync(&hc->fatal_work);
	pvusb_free(hc);
}

static const struct xenbus_device_id pvusb_ids[] = {
	{ "vusb" },
	{ "" },
};

static struct xenbus_driver pvusb_driver = {
	.ids = pvusb_ids,
	.probe = pvusb_probe,
	.otherend_changed = pvusb_backend_changed,
	.remove = pvusb_remove,
};

static int __init pvusb_init(void)
{
	int err;

	if (!xen_domain())
		return -ENODEV;
	err = pvusb_urb_cache_init();
	if (err)
		return err;
	err = xenbus_register_frontend(&pvusb_driver);
	if (err)
		pvusb_urb_cache_exit();
	return err;
}
module_init(pvusb_init);

static void __exit pvusb_exit(void)
{
	xenbus_unregister_driver(&pvusb_driver);
	pvusb_urb_cache_exit();
}
module_exit(pvusb_exit);

MODULE_ALIAS("xen:vusb");
MODULE_DESCRIPTION("PVUSB frontend with multi-page rings, persistent grants, indirect segments and USB 3");
MODULE_LICENSE("GPL");
