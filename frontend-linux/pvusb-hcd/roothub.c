// SPDX-License-Identifier: GPL-2.0-only
/*
 * The virtual root hubs. Their ports are this guest's own: power, reset and
 * suspend are answered here, and only the backend's conn-ring responses
 * connect or disconnect a device. On a usb-ver 3 controller each backend
 * port appears on both root hubs (as an xHCI port has a USB 2 and a USB 3
 * half): a SuperSpeed device connects on the USB 3 one, any other on the
 * USB 2 one.
 */
#include <linux/jiffies.h>
#include <linux/usb/ch11.h>
#include <asm/unaligned.h>
#include <xen/events.h>

#include "pvusb-hcd.h"

/* How long a port reset and a resume take here (USB 2.0, 7.1.7.5 and 7.1.7.7). */
#define RESET_MS	10
#define RESUME_MS	20

#define CHANGE(bits)	((u32)(bits) << 16)
#define USB2_SPEED_BITS	(USB_PORT_STAT_LOW_SPEED | USB_PORT_STAT_HIGH_SPEED)

/* What a port loses when its device leaves or is reset. */
static u32 session_bits(const struct pvusb_roothub *rh)
{
	/* On a USB 3 hub the low-speed bit is the power bit (USB 3.2, 10.16.2.6.1). */
	return USB_PORT_STAT_ENABLE | USB_PORT_STAT_SUSPEND |
	       (rh->usb3 ? 0 : USB2_SPEED_BITS);
}

static bool on_usb3(u8 speed)
{
	return speed == PVUSB_SPEED_SUPER;
}

static u32 power_bit(const struct pvusb_roothub *rh)
{
	return rh->usb3 ? USB_SS_PORT_STAT_POWER : USB_PORT_STAT_POWER;
}

static bool device_here(const struct pvusb_roothub *rh, unsigned int port)
{
	u8 speed = rh->hc->port_speed[port];

	return speed != XENUSB_SPEED_NONE && on_usb3(speed) == rh->usb3;
}

static void set_link_state(struct pvusb_port *p, u32 link)
{
	p->status = (p->status & ~USB_PORT_STAT_LINK_STATE) |
		    (link & USB_PORT_STAT_LINK_STATE);
}

/* What a powered port shows once its device came or went. */
static void show_connection(struct pvusb_roothub *rh, unsigned int port)
{
	struct pvusb_port *p = &rh->ports[port];
	bool was = p->status & USB_PORT_STAT_CONNECTION;
	bool now = device_here(rh, port);

	if (!(p->status & power_bit(rh)))
		return;
	if (now) {
		p->status |= USB_PORT_STAT_CONNECTION;
		if (rh->usb3)
			set_link_state(p, USB_SS_PORT_LS_U0);
	} else {
		p->status &= ~(USB_PORT_STAT_CONNECTION | session_bits(rh));
		if (rh->usb3)
			set_link_state(p, USB_SS_PORT_LS_RX_DETECT);
	}
	if (was != now)
		p->status |= CHANGE(USB_PORT_STAT_C_CONNECTION);
}

/*
 * A conn-ring response: the device on portnum now runs at speed (NONE when
 * it left). Returns -EPROTO for a port or speed this controller cannot have.
 */
int pvusb_port_event(struct pvusb_hc *hc, u8 portnum, u8 speed,
		     bool *changed2, bool *changed3)
{
	unsigned int port = portnum - 1;
	u8 old;

	if (portnum < 1 || portnum > hc->num_ports)
		return -EPROTO;
	if (speed > XENUSB_SPEED_HIGH &&
	    !(speed == PVUSB_SPEED_SUPER && hc->rh3))
		return -EPROTO;

	old = hc->port_speed[port];
	if (old == speed)
		return 0;
	hc->port_speed[port] = speed;
	dev_info(&hc->xbdev->dev, "event=port_changed port=%u speed=%u was=%u\n",
		 portnum, speed, old);
	if (on_usb3(old) || on_usb3(speed)) {
		show_connection(hc->rh3, port);
		*changed3 = true;
	}
	if (!on_usb3(old) || !on_usb3(speed)) {
		show_connection(hc->rh2, port);
		*changed2 = true;
	}
	return 0;
}

void pvusb_poll_roothubs(struct pvusb_hc *hc, bool changed2, bool changed3)
{
	if (changed2)
		usb_hcd_poll_rh_status(hc->hcd);
	if (changed3 && hc->usb3_hcd)
		usb_hcd_poll_rh_status(hc->usb3_hcd);
}

/* Every device leaves: the backend is gone. */
void pvusb_unplug_all(struct pvusb_hc *hc)
{
	bool changed2 = false, changed3 = false;
	unsigned long flags;
	unsigned int port;

	spin_lock_irqsave(&hc->lock, flags);
	for (port = 1; port <= hc->num_ports; port++)
		pvusb_port_event(hc, port, XENUSB_SPEED_NONE, &changed2,
				 &changed3);
	spin_unlock_irqrestore(&hc->lock, flags);
	pvusb_poll_roothubs(hc, changed2, changed3);
}

/*
 * Takes the backend's conn-ring answers (a device came, left, or changed
 * speed) and hands each request back. Returns true when more may have come
 * in meanwhile.
 */
bool pvusb_conn_responses(struct pvusb_hc *hc)
{
	bool changed2 = false, changed3 = false;
	struct xenusb_conn_response rsp;
	unsigned long flags;
	RING_IDX rc, rp;
	int more = 0;
	int notify;

	spin_lock_irqsave(&hc->lock, flags);
	if (hc->error || hc->dead || !hc->conn_ring.sring)
		goto unlock;
	rp = READ_ONCE(hc->conn_ring.sring->rsp_prod);
	if (RING_RESPONSE_PROD_OVERFLOW(&hc->conn_ring, rp)) {
		pvusb_set_error(hc, "conn_rsp_prod_overflow");
		goto unlock;
	}
	virt_rmb(); /* The answers up to rp, after rp itself. */
	for (rc = hc->conn_ring.rsp_cons; rc != rp; rc++) {
		RING_COPY_RESPONSE(&hc->conn_ring, rc, &rsp);
		if (pvusb_port_event(hc, rsp.portnum, rsp.speed, &changed2,
				     &changed3)) {
			pvusb_set_error(hc, "conn_rsp_bad_port_or_speed");
			break;
		}
		RING_GET_REQUEST(&hc->conn_ring,
				 hc->conn_ring.req_prod_pvt)->id = rsp.id;
		hc->conn_ring.req_prod_pvt++;
	}
	hc->conn_ring.rsp_cons = rc;
	if (hc->error)
		goto unlock;
	RING_FINAL_CHECK_FOR_RESPONSES(&hc->conn_ring, more);
	RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&hc->conn_ring, notify);
	if (notify)
		notify_remote_via_irq(hc->irq);
unlock:
	spin_unlock_irqrestore(&hc->lock, flags);
	pvusb_poll_roothubs(hc, changed2, changed3);
	return more;
}

int pvusb_hub_status_data(struct usb_hcd *hcd, char *buf)
{
	struct pvusb_roothub *rh = pvusb_rh(hcd);
	struct pvusb_hc *hc = rh->hc;
	unsigned int len = 1 + hc->num_ports / 8;
	unsigned long flags;
	bool changed = false;
	unsigned int i;

	memset(buf, 0, len);
	spin_lock_irqsave(&hc->lock, flags);
	for (i = 0; i < hc->num_ports; i++) {
		if (rh->ports[i].status & 0xffff0000) {
			buf[(i + 1) / 8] |= 1 << ((i + 1) % 8);
			changed = true;
		}
	}
	spin_unlock_irqrestore(&hc->lock, flags);
	if (changed && hcd->state == HC_STATE_SUSPENDED)
		usb_hcd_resume_root_hub(hcd);
	return changed ? len : 0;
}

static void hub_descriptor(struct pvusb_roothub *rh,
			   struct usb_hub_descriptor *desc)
{
	unsigned int ports = rh->hc->num_ports;
	unsigned int bytes = 1 + ports / 8;

	memset(desc, 0, sizeof(*desc));
	desc->bNbrPorts = ports;
	/*
	 * No power switching: a port usbcore powered off while idle could not
	 * see the backend's next device, as a real one could not.
	 */
	desc->wHubCharacteristics = cpu_to_le16(HUB_CHAR_NO_LPSM |
						HUB_CHAR_INDV_PORT_OCPM);
	desc->bPwrOn2PwrGood = 10;
	if (rh->usb3) {
		desc->bDescriptorType = USB_DT_SS_HUB;
		desc->bDescLength = USB_DT_SS_HUB_SIZE;
		return;
	}
	desc->bDescriptorType = USB_DT_HUB;
	desc->bDescLength = USB_DT_HUB_NONVAR_SIZE + 2 * bytes;
	/* Every device removable; PortPwrCtrlMask all ones (USB 2.0, 11.23.2.1). */
	memset(&desc->u.hs.DeviceRemovable[bytes], 0xff, bytes);
}

/* The USB 3 root hub's BOS: SuperSpeed, nothing else. */
static const struct {
	struct usb_bos_descriptor bos;
	struct usb_ss_cap_descriptor ss_cap;
} __packed usb3_bos = {
	.bos = {
		.bLength = USB_DT_BOS_SIZE,
		.bDescriptorType = USB_DT_BOS,
		.wTotalLength = cpu_to_le16(sizeof(usb3_bos)),
		.bNumDeviceCaps = 1,
	},
	.ss_cap = {
		.bLength = USB_DT_USB_SS_CAP_SIZE,
		.bDescriptorType = USB_DT_DEVICE_CAPABILITY,
		.bDevCapabilityType = USB_SS_CAP_TYPE,
		.wSpeedSupported = cpu_to_le16(USB_5GBPS_OPERATION),
		.bFunctionalitySupport = ilog2(USB_5GBPS_OPERATION),
	},
};

/* Ends a reset or a resume whose time is up, as GetPortStatus sees it. */
static void finish_timed(struct pvusb_roothub *rh, unsigned int port)
{
	struct pvusb_port *p = &rh->ports[port];

	if (time_before(jiffies, p->timeout))
		return;
	if (p->resuming) {
		p->resuming = false;
		p->status &= ~USB_PORT_STAT_SUSPEND;
		p->status |= CHANGE(USB_PORT_STAT_C_SUSPEND);
	}
	if (!(p->status & USB_PORT_STAT_RESET))
		return;
	p->status &= ~USB_PORT_STAT_RESET;
	p->status |= CHANGE(USB_PORT_STAT_C_RESET);
	if (!device_here(rh, port))
		return;
	p->status |= USB_PORT_STAT_ENABLE;
	if (rh->usb3) {
		set_link_state(p, USB_SS_PORT_LS_U0);
		return;
	}
	switch (rh->hc->port_speed[port]) {
	case XENUSB_SPEED_LOW:
		p->status |= USB_PORT_STAT_LOW_SPEED;
		break;
	case XENUSB_SPEED_HIGH:
		p->status |= USB_PORT_STAT_HIGH_SPEED;
		break;
	}
}

static void start_reset(struct pvusb_roothub *rh, unsigned int port)
{
	struct pvusb_port *p = &rh->ports[port];

	if (!(p->status & power_bit(rh)))
		return;
	p->status &= ~session_bits(rh);
	p->status |= USB_PORT_STAT_RESET;
	p->resuming = false;
	p->timeout = jiffies + msecs_to_jiffies(RESET_MS);
}

/* The change bit a C_* port feature selector names, or 0. */
static u32 feature_change_bit(const struct pvusb_roothub *rh, u16 feature)
{
	switch (feature) {
	case USB_PORT_FEAT_C_CONNECTION:
		return CHANGE(USB_PORT_STAT_C_CONNECTION);
	case USB_PORT_FEAT_C_RESET:
		return CHANGE(USB_PORT_STAT_C_RESET);
	case USB_PORT_FEAT_C_OVER_CURRENT:
		return CHANGE(USB_PORT_STAT_C_OVERCURRENT);
	}
	if (rh->usb3) {
		switch (feature) {
		case USB_PORT_FEAT_C_BH_PORT_RESET:
			return CHANGE(USB_PORT_STAT_C_BH_RESET);
		case USB_PORT_FEAT_C_PORT_LINK_STATE:
			return CHANGE(USB_PORT_STAT_C_LINK_STATE);
		case USB_PORT_FEAT_C_PORT_CONFIG_ERROR:
			return CHANGE(USB_PORT_STAT_C_CONFIG_ERROR);
		}
		return 0;
	}
	switch (feature) {
	case USB_PORT_FEAT_C_ENABLE:
		return CHANGE(USB_PORT_STAT_C_ENABLE);
	case USB_PORT_FEAT_C_SUSPEND:
		return CHANGE(USB_PORT_STAT_C_SUSPEND);
	case USB_PORT_FEAT_C_PORT_L1:
		return CHANGE(USB_PORT_STAT_C_L1);
	}
	return 0;
}

static int clear_port_feature(struct pvusb_roothub *rh, unsigned int port,
			      u16 feature)
{
	struct pvusb_port *p = &rh->ports[port];
	u32 bit;

	switch (feature) {
	case USB_PORT_FEAT_ENABLE:
		p->status &= ~USB_PORT_STAT_ENABLE;
		return 0;
	case USB_PORT_FEAT_POWER:
		p->status = 0;
		p->resuming = false;
		return 0;
	case USB_PORT_FEAT_SUSPEND:
		if (rh->usb3)
			return -EPIPE;
		if (p->status & USB_PORT_STAT_SUSPEND) {
			p->resuming = true;
			p->timeout = jiffies + msecs_to_jiffies(RESUME_MS);
		}
		return 0;
	}
	bit = feature_change_bit(rh, feature);
	if (!bit)
		return -EPIPE;
	p->status &= ~bit;
	return 0;
}

static int set_port_feature(struct pvusb_roothub *rh, unsigned int port,
			    u16 feature, u16 index)
{
	struct pvusb_port *p = &rh->ports[port];

	switch (feature) {
	case USB_PORT_FEAT_POWER:
		p->status |= power_bit(rh);
		if (rh->usb3)
			set_link_state(p, USB_SS_PORT_LS_RX_DETECT);
		show_connection(rh, port);
		return 0;
	case USB_PORT_FEAT_RESET:
		start_reset(rh, port);
		return 0;
	}
	if (rh->usb3) {
		switch (feature) {
		case USB_PORT_FEAT_BH_PORT_RESET:
			start_reset(rh, port);
			return 0;
		case USB_PORT_FEAT_LINK_STATE:
			/* The link state to go to is in wIndex's high byte. */
			set_link_state(p, (index >> 8) << 5);
			if ((p->status & USB_PORT_STAT_LINK_STATE) ==
			    USB_SS_PORT_LS_SS_DISABLED)
				p->status &= ~USB_PORT_STAT_ENABLE;
			return 0;
		case USB_PORT_FEAT_U1_TIMEOUT:
		case USB_PORT_FEAT_U2_TIMEOUT:
		case USB_PORT_FEAT_REMOTE_WAKE_MASK:
			return 0;
		}
		return -EPIPE;
	}
	switch (feature) {
	case USB_PORT_FEAT_SUSPEND:
		if (p->status & USB_PORT_STAT_ENABLE)
			p->status |= USB_PORT_STAT_SUSPEND;
		return 0;
	case USB_PORT_FEAT_TEST:
	case USB_PORT_FEAT_INDICATOR:
		return 0;
	}
	return -EPIPE;
}

int pvusb_hub_control(struct usb_hcd *hcd, u16 type_req, u16 value,
		      u16 index, char *buf, u16 length)
{
	struct pvusb_roothub *rh = pvusb_rh(hcd);
	struct pvusb_hc *hc = rh->hc;
	unsigned int port = (index & 0xff) - 1;
	bool port_ok = (index & 0xff) >= 1 && (index & 0xff) <= hc->num_ports;
	unsigned long flags;
	bool changed = false;
	unsigned int i;
	int ret = 0;

	spin_lock_irqsave(&hc->lock, flags);
	switch (type_req) {
	case ClearHubFeature:
	case SetHubFeature:
		break;
	case GetHubStatus:
		put_unaligned_le32(0, buf);
		break;
	case GetHubDescriptor:
		if (rh->usb3 && (length < USB_DT_SS_HUB_SIZE ||
				 value != (USB_DT_SS_HUB << 8))) {
			ret = -EPIPE;
			break;
		}
		hub_descriptor(rh, (struct usb_hub_descriptor *)buf);
		break;
	case DeviceRequest | USB_REQ_GET_DESCRIPTOR:
		if (!rh->usb3 || (value >> 8) != USB_DT_BOS) {
			ret = -EPIPE;
			break;
		}
		memcpy(buf, &usb3_bos, min_t(size_t, length, sizeof(usb3_bos)));
		ret = min_t(size_t, length, sizeof(usb3_bos));
		break;
	case GetPortStatus:
		if (!port_ok || value != HUB_PORT_STATUS) {
			ret = -EPIPE;
			break;
		}
		finish_timed(rh, port);
		put_unaligned_le32(rh->ports[port].status, buf);
		break;
	case ClearPortFeature:
		ret = port_ok ? clear_port_feature(rh, port, value) : -EPIPE;
		break;
	case SetPortFeature:
		ret = port_ok ? set_port_feature(rh, port, value, index) : -EPIPE;
		break;
	case GetPortErrorCount:
		if (!rh->usb3 || !port_ok) {
			ret = -EPIPE;
			break;
		}
		put_unaligned_le16(0, buf);
		break;
	case SetHubDepth:
		if (!rh->usb3)
			ret = -EPIPE;
		break;
	default:
		ret = -EPIPE;
	}
	for (i = 0; i < hc->num_ports; i++)
		if (rh->ports[i].status & 0xffff0000)
			changed = true;
	spin_unlock_irqrestore(&hc->lock, flags);

	if (changed)
		usb_hcd_poll_rh_status(hcd);
	return ret;
}
