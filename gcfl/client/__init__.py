"""The client side: a Keras NumPyClient (:mod:`gcfl.client.client`) and its ClientApp."""
